"""The package's import graph has no upward edge.

Walks every module of kerbside_tempest_plugin with ast (nothing is
imported, so optional heavy dependencies do not matter) and checks each
import of a sibling package against the layer table of
docs/plans/structure.md. Lazy imports inside functions count too: a lazy
upward import is still an upward import.
"""

import ast
import os

import pytest

import kerbside_tempest_plugin

ROOT = os.path.dirname(kerbside_tempest_plugin.__file__)
PKG = 'kerbside_tempest_plugin'

# package (or top-level module) -> the packages it may import. Lowest
# first; a name missing here is an error, so a new package must be placed.
# config (the oslo.config options) imports nothing of ours: it sits beside
# common, so a provider's from_config can read tempest's [compute] options.
BELOW_SCENARIO = {'common', 'config', 'digest', 'sextant', 'ryll',
                  'providers', 'guest_images', 'lane', 'kerbside_api',
                  'spice'}
ALLOWED = {
    'common': set(),
    'config': set(),
    'digest': {'common'},
    'sextant': {'common', 'digest'},
    'ryll': {'common'},
    'kerbside_api': {'common'},
    'spice': {'common'},
    'providers': {'common', 'config'},
    'guest_images': {'common'},
    'guests': {'common'},
    # lane puts the fault relay (spice) on a hypervisor leg
    'lane': {'common', 'config', 'providers', 'ryll', 'guest_images',
             'kerbside_api', 'spice'},
    'scenario': BELOW_SCENARIO,
    'loadtest': BELOW_SCENARIO,
    # the live console and MCP server drive the scenario's walks
    'console': BELOW_SCENARIO | {'scenario'},
    'cmd': BELOW_SCENARIO | {'scenario', 'loadtest', 'console'},
    # cmd and tests are one layer: a tempest class may use a CLI helper.
    'tests': BELOW_SCENARIO | {'scenario', 'loadtest', 'console', 'cmd'},
    'plugin': {'config'},
}

# Known upward edges still to be removed, each with the issue step that
# removes it. Empty when the layering is clean.
KNOWN = set()


def _modules():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d != '__pycache__']
        for name in filenames:
            if name.endswith('.py'):
                yield os.path.join(dirpath, name)


def _layer(path):
    parts = os.path.relpath(path, ROOT).split(os.sep)
    if len(parts) == 1:
        return None if parts[0] == '__init__.py' else parts[0][:-3]
    return parts[0]


def _imported(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError('relative import at line %d'
                                     % node.lineno)
            if node.module == PKG:
                for alias in node.names:
                    yield node.lineno, alias.name
            elif node.module.startswith(PKG + '.'):
                yield node.lineno, node.module.split('.')[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PKG + '.'):
                    yield node.lineno, alias.name.split('.')[1]


def edges():
    """(layer, imported layer, path, line) for every cross-layer import."""
    out = []
    for path in _modules():
        src = _layer(path)
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for line, dst in _imported(tree):
            if src is not None and dst != src:
                out.append((src, dst, os.path.relpath(path, ROOT), line))
    return out


def upward(all_edges):
    bad = []
    for src, dst, path, line in all_edges:
        if src not in ALLOWED:
            bad.append('%s:%d: %s is not in the layer table' % (
                path, line, src))
        elif dst not in ALLOWED[src] and (src, dst) not in KNOWN:
            bad.append('%s:%d: %s imports %s (allowed: %s)' % (
                path, line, src, dst, ', '.join(sorted(ALLOWED[src]))
                or 'nothing'))
    return bad


def test_no_upward_import():
    bad = upward(edges())
    assert not bad, 'upward imports:\n' + '\n'.join(bad)


def test_the_walk_sees_lazy_imports():
    # The walk must find the imports it is meant to police, lazy ones
    # (inside functions) included.
    found = {(s, d) for s, d, _, _ in edges()}
    assert ('providers', 'common') in found
    assert ('scenario', 'sextant') in found


def test_an_upward_edge_fails():
    bad = upward([('providers', 'lane', 'providers/x.py', 3),
                  ('common', 'providers', 'common/y.py', 4),
                  ('newpkg', 'common', 'newpkg/z.py', 5)])
    assert len(bad) == 3, bad


def test_known_exceptions_are_still_real():
    # An entry in KNOWN that no longer occurs must be deleted.
    found = {(s, d) for s, d, _, _ in edges()}
    assert KNOWN <= found, KNOWN - found


@pytest.mark.parametrize('path', [p for p in _modules()
                                  if p.endswith('__init__.py')])
def test_no_module_getattr_in_packages(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert '__getattr__' not in names, path
