"""tools/create_lmdb.py on bad inputs: 0-byte source images, empty and corrupt stored values, --verify, --repair."""
import mclir_plugin  # noqa: F401  (before basicsr: installs the compatibility shim)

import os

import cv2
import lmdb
import numpy as np
import pytest

from mclir_plugin.data import check_lmdb, path_to_key, verify_lmdb, write_pair_list
from mclir_plugin.data import lmdb_writer
from mclir_plugin.commands import create_lmdb
from mclir_plugin.data.lmdb_writer import read_keys


PAIRS = [('hazy/1_1_0.90179.png', 'clear/1.png'), ('hazy/1_2_0.8.png', 'clear/1.png'),
         ('hazy/2_1_0.75.png', 'clear/2.png')]


@pytest.fixture
def its(tmp_path):
    """A tiny ITS tree, its list and the create_lmdb arguments that store it in one lmdb."""
    root, rng = tmp_path / 'ITS', np.random.default_rng(0)
    for rel in {p for pair in PAIRS for p in pair}:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / rel), rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    list_file = str(tmp_path / 'its.txt')
    write_pair_list(list_file, PAIRS)
    db = str(tmp_path / 'ITS.lmdb')
    return str(root), db, ['--list', list_file, '--dataroot', str(root), '--out', db, '--no-progress']


def put_raw(db, values):
    """Overwrite stored values as a disk error or a cut-short copy would."""
    lmdb_writer.close_shared_envs()  # lmdb opens an environment once per process
    with lmdb.open(db) as env, env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key.encode('ascii'), value)


def stored(db, key):
    with lmdb_writer.shared_env(db).begin() as txn:
        return cv2.imdecode(np.frombuffer(txn.get(key.encode('ascii')), np.uint8), cv2.IMREAD_UNCHANGED)


def test_zero_byte_source_is_named_and_the_rest_written(its, capsys):
    root, db, args = its
    open(os.path.join(root, 'hazy/1_2_0.8.png'), 'wb').close()
    assert create_lmdb.main(args) == 1
    err = capsys.readouterr().err
    assert "1 source images could not be stored (the other 4 were)" in err
    assert "key 'hazy/1_2_0%2E8': source image '" in err and "hazy/1_2_0.8.png': 0 bytes" in err
    assert 'buf.empty' not in err and 'and re-run: it resumes' in err
    assert f"its.txt, line 2: {os.path.join(root, 'hazy/1_2_0.8.png')} (fix the file, or remove the line)" in err
    assert set(check_lmdb(db)) == read_keys(db) and len(read_keys(db)) == 4  # the meta file lists what is stored
    assert cv2.imwrite(os.path.join(root, 'hazy/1_2_0.8.png'), np.zeros((12, 16, 3), np.uint8))
    assert create_lmdb.main(args) == 0
    assert '5 images, 1 written, 4 already there' in capsys.readouterr().out


def test_bad_values_named_verified_and_repaired(its, capsys):
    root, db, args = its
    assert create_lmdb.main(args) == 0
    good = stored(db, 'clear/2')
    truncated = bytes(lmdb_writer.shared_env(db).begin().get(b'clear/2'))[:40]  # a valid header, cut data
    put_raw(db, {'clear/1': b'', 'hazy/2_1_0%2E75': b'GIF89a not a png', 'clear/2': truncated})
    capsys.readouterr()

    assert create_lmdb.main(args) == 1  # resuming skips stored keys, then names the bad ones and the fix
    err = capsys.readouterr().err
    assert "2 stored values are not PNG images: 'clear/1', 'hazy/2_1_0%2E75'" in err and '--repair' in err

    assert create_lmdb.main(args + ['--verify']) == 1
    out = capsys.readouterr().out
    assert f"bad key 'clear/1' (source '{os.path.join(root, 'clear/1.png')}'): empty value (0 bytes)" in out
    assert "bad key 'hazy/2_1_0%2E75'" in out and 'value is not a PNG image' in out
    assert "bad key 'clear/2'" in out and 'PNG data cannot be decoded' in out and '3 bad values' in out
    assert create_lmdb.main(['--verify', '--out', db, '--no-progress']) == 1  # without the sources too
    assert "bad key 'clear/1': empty value" in capsys.readouterr().out

    assert create_lmdb.main(args + ['--repair']) == 0
    out = capsys.readouterr().out
    for key, rel in (('clear/1', 'clear/1.png'), ('clear/2', 'clear/2.png'), ('hazy/2_1_0%2E75', PAIRS[2][0])):
        assert f"repaired key '{key}' from '{os.path.join(root, rel)}'" in out
    assert '3 repaired' in out and verify_lmdb(db, progress=False) == []
    assert np.array_equal(stored(db, 'clear/2'), good)
    assert np.array_equal(stored(db, 'clear/1'), cv2.imread(os.path.join(root, 'clear/1.png'), cv2.IMREAD_UNCHANGED))
    assert set(check_lmdb(db)) == read_keys(db) == {path_to_key(p) for pair in PAIRS for p in pair}
    assert create_lmdb.main(args + ['--verify']) == 0


def test_verify_checks_meta_shapes_and_repair_needs_a_source(its, tmp_path, capsys):
    root, db, args = its
    assert create_lmdb.main(args) == 0
    small = cv2.imencode('.png', np.zeros((5, 7, 3), np.uint8))[1].tobytes()  # a PNG, but not what meta says
    put_raw(db, {'clear/2': small, 'stray/x': b''})
    bad = {value.key: value.reason for value in verify_lmdb(db, progress=False)}
    assert bad['clear/2'] == "image is (5, 7, 3) but meta_info.txt says (12, 16, 3)"
    assert bad['stray/x'] == 'empty value (0 bytes)'
    capsys.readouterr()
    assert create_lmdb.main(args + ['--repair']) == 1  # 'stray/x' is in no list: named, not guessed
    captured = capsys.readouterr()
    assert "cannot repair key 'stray/x': no source image" in captured.err
    assert "repaired key 'clear/2'" in captured.out and stored(db, 'clear/2').shape == (12, 16, 3)
    assert create_lmdb.main(['--verify', '--out', str(tmp_path / 'none.lmdb'), '--no-progress']) == 1
    with pytest.raises(SystemExit):
        create_lmdb.main(args + ['--verify', '--repair'])
