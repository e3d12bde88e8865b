"""guest_images: one resolution order for every caller, and the bundled
guests built from the package's own sources into a per-user cache."""

import fcntl
import os
import shutil

import pytest

from kerbside_tempest_plugin.common import errors
from kerbside_tempest_plugin import guest_images


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv('SEXTANT_IMAGE', raising=False)
    monkeypatch.delenv('KTP_LATENCY_IMAGE', raising=False)
    monkeypatch.setenv('KTP_IMAGES_CACHE', str(tmp_path / 'cache'))
    return tmp_path


def _file(path):
    path.write_bytes(b'QFI\xfb')
    return str(path)


def test_configured_then_variable(clean_env, monkeypatch):
    conf = _file(clean_env / 'conf.qcow2')
    env = _file(clean_env / 'env.qcow2')
    monkeypatch.setenv('SEXTANT_IMAGE', env)
    assert guest_images.sextant_image(conf) == conf
    assert guest_images.sextant_image() == env
    assert guest_images.sextant_image(None) == env
    monkeypatch.setenv('KTP_LATENCY_IMAGE', conf)
    assert guest_images.latency_image() == conf


def test_a_named_image_that_is_missing_is_an_error(clean_env, monkeypatch):
    with pytest.raises(guest_images.GuestImageError) as e:
        guest_images.sextant_image(str(clean_env / 'nope.qcow2'))
    assert 'the configured image' in str(e.value)
    assert isinstance(e.value, errors.HarnessError)
    monkeypatch.setenv('KTP_LATENCY_IMAGE', str(clean_env / 'gone'))
    with pytest.raises(guest_images.GuestImageError) as e:
        guest_images.latency_image()
    assert 'KTP_LATENCY_IMAGE' in str(e.value)
    with pytest.raises(guest_images.GuestImageError):
        guest_images.resolve('windows')


def test_the_sources_ship_inside_the_package():
    files = guest_images.source_files()
    for f in ('build.sh', 'sextant/main.c', 'sextant/psf2h.py',
              'latency/build.sh', 'latency/latency.c'):
        assert f in files
    pkg = os.path.dirname(os.path.abspath(guest_images.__file__))
    assert guest_images.SOURCES == os.path.join(pkg, 'guests')


def test_the_cache_is_keyed_by_the_sources(clean_env, monkeypatch):
    src = clean_env / 'guests'
    shutil.copytree(guest_images.SOURCES, src)
    monkeypatch.setattr(guest_images, 'SOURCES', str(src))
    first = guest_images.cache_dir()
    assert first.startswith(str(clean_env / 'cache') + os.sep)
    assert guest_images.cache_dir() == first
    with open(src / 'sextant' / 'main.c', 'a') as f:
        f.write('\n/* changed */\n')
    assert guest_images.cache_dir() != first
    (src / 'sextant' / '__pycache__').mkdir()
    (src / 'sextant' / '__pycache__' / 'x.pyc').write_bytes(b'x')
    assert 'sextant/__pycache__/x.pyc' not in guest_images.source_files()


def test_sources_missing_from_the_install(clean_env, monkeypatch):
    monkeypatch.setattr(guest_images, 'SOURCES', str(clean_env / 'none'))
    with pytest.raises(guest_images.GuestImageError) as e:
        guest_images.sextant_image()
    assert 'reinstall kerbside-tempest-plugin' in str(e.value)


def test_a_missing_build_tool_is_said(clean_env, monkeypatch):
    monkeypatch.setattr(guest_images, 'BUILD_TOOLS',
                        ('gcc', 'no-such-compiler-ktp'))
    with pytest.raises(guest_images.GuestImageError) as e:
        guest_images.sextant_image()
    assert 'cannot build the sextant guest' in str(e.value)
    assert 'no-such-compiler-ktp' in str(e.value)


def test_a_held_lock_times_out_readably(clean_env):
    out = guest_images.cache_dir()
    os.makedirs(out)
    with open(os.path.join(out, '.lock'), 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(guest_images.GuestImageError) as e:
            guest_images.bundled('sextant', timeout=0.5)
    assert 'still held' in str(e.value)


@pytest.mark.integration
def test_bundled_guests_build_into_the_cache_once(clean_env, capsys):
    assert guest_images.main(['--bundled']) == 0
    lines = capsys.readouterr().out.splitlines()
    out = guest_images.cache_dir()
    assert lines == [os.path.join(out, 'latency.qcow2'),
                     os.path.join(out, 'sextant.qcow2')]
    for path in lines:
        with open(path, 'rb') as f:
            assert f.read(4) == b'QFI\xfb'   # qcow2 magic
    log = os.path.join(out, 'build.log')
    size = os.path.getsize(log)
    # Built once: a second resolution does not run the build again.
    assert guest_images.sextant_image() == lines[1]
    assert os.path.getsize(log) == size
    assert guest_images.main(['sextant']) == 0
    assert capsys.readouterr().out == lines[1] + '\n'


def test_kerbside_harness_up_reads_sextant_image(clean_env, monkeypatch,
                                                 capsys):
    """kerbside-harness up without --image takes SEXTANT_IMAGE (it once
    ignored it): a missing one fails before anything is started.
    """
    from kerbside_tempest_plugin.cmd import harness
    monkeypatch.setenv('SEXTANT_IMAGE', str(clean_env / 'missing.qcow2'))
    rc = harness.main(['up', '--route', 'direct', '--no-kerbside',
                       '--no-ryll', '--workdir', str(clean_env / 'w')])
    assert rc == 1
    err = capsys.readouterr().err
    assert 'SEXTANT_IMAGE' in err and 'missing.qcow2: no such file' in err
