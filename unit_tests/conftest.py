"""Shared pytest fixtures for the unit and integration suite."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_root():
    return REPO_ROOT


def require_tools(*names):
    """Fail (not skip) when a tool an integration test needs is missing.

    Set KTP_ALLOW_SKIP=1 to turn the failure into a skip on a developer box
    without the system packages. CI never sets it, so a missing tool there
    is a red build rather than a silently green one.
    """
    import shutil
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        msg = 'missing tools: %s (run tools/setup.sh)' % ', '.join(missing)
        if os.environ.get('KTP_ALLOW_SKIP') == '1':
            pytest.skip(msg)
        pytest.fail(msg)
