"""A new user's problems with the batch layer: arguments, the ``__main__`` guard, the lock, messages, warnings.

Each test runs the batch in threads (``processes=False``) unless it needs a
real process: the CLI's handler is called in this process with run_batch
told so, and only the ``__main__``-guard and live-lock tests start Python.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from specwidgets.batch import BatchLockedError, add_batch_parser, run_batch, run_batch_command
from specwidgets.batch import cli as batch_cli
from specwidgets.batch import runner as batch
from specwidgets.io.sample_data import goodman_available
from specwidgets.io.synthetic import make_synthetic_longslit

pytest.importorskip("distributed")

SHAPE = (40, 300)
MASK = (12, 26)
REPO = Path(__file__).resolve().parents[1]


def _write(path, data):
    fits.PrimaryHDU(np.asarray(data)).writeto(path, overwrite=True)
    return path


@pytest.fixture(scope="module")
def frames():
    return make_synthetic_longslit(shape=SHAPE, n_exposures=2, tilt=2.0, n_sky_lines=10, n_arc_lines=10, seed=21)


@pytest.fixture
def raw(tmp_path, frames):
    """Two science exposures and an arc (bias-free float64 FITS files, generic instrument)."""
    folder = tmp_path / "raw"
    folder.mkdir()
    science = [_write(folder / f"sci_{i:02d}.fits", frames.science[i]) for i in range(2)]
    arc = _write(folder / "arc_01.fits", frames.arc)
    return {"science": science, "arc": [arc], "folder": folder}


def _api(raw, out, arc=None, **kw):
    args = dict(masks=[MASK], out_dir=out, workers=1, processes=False, progress=False, read_noise=4.0)
    args.update(kw)
    return run_batch(raw["science"], raw["arc"] if arc is None else arc, **args)


def _cli(monkeypatch, argv):
    """``specwidgets batch ARGV`` through the command's own handler, its cluster in threads; the exit code."""
    parser = argparse.ArgumentParser(prog="specwidgets")
    add_batch_parser(parser.add_subparsers(dest="command", required=True))
    monkeypatch.setattr(batch_cli, "run_batch", functools.partial(run_batch, processes=False))
    return run_batch_command(parser.parse_args(["batch", *map(str, argv), "--no-progress"]))


def _outputs(folder):
    return sorted(Path(folder).glob("*_sky.fits"))


# ------------------------------------------------------------------ 1. no --arc on the command line
def test_command_without_arc_fits_the_warp_on_the_sky_lines(raw, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code = _cli(monkeypatch, [*raw["science"], "--mask", "12:26", "--read-noise", "4", "--out", out, "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    files = _outputs(out)
    assert len(files) == 2
    assert all(fits.getval(p, "SKYWARP") == "sky lines" and fits.getval(p, "SWNARC") == 0 for p in files)
    # No calibration frames to tell the unit: the science frames' own (no GAIN card: ADU).
    assert all(fits.getval(p, "SWUNIT") == "adu" for p in files)
    # One line says so before the summary, which counts it without repeating it.
    before_summary, summary = err.split("specwidgets batch: 2 exposure(s)")
    assert sum("own sky lines" in line for line in before_summary.splitlines()) == 1
    assert "own sky lines" not in summary and "2 note(s): printed above" in summary
    assert "no bias frames: nothing is subtracted" in before_summary


def test_command_still_needs_science_files_and_a_mask(tmp_path, monkeypatch, capsys):
    assert _cli(monkeypatch, ["--mask", "12:26", "--out", tmp_path / "o"]) == 2
    assert "give SCIENCE files" in capsys.readouterr().err
    sci = _write(tmp_path / "s.fits", np.zeros(SHAPE))
    assert _cli(monkeypatch, [sci, "--out", tmp_path / "o"]) == 2
    err = capsys.readouterr().err
    assert "--mask" in err and "--arc" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option, value", [("--mask", "-5:20"), ("--crop", "-5:")])
def test_a_range_starting_with_a_minus_is_read_as_a_range(tmp_path, capsys, option, value):
    # argparse alone takes "-5:20" for an option and answers "expected one argument".
    from specwidgets.cli import main

    sci = _write(tmp_path / "s.fits", np.zeros(SHAPE))
    argv = ["batch", str(sci), "--out", str(tmp_path / "o"), "--mask", "12:26", option, value]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err and "out of range: rows count from 0" in err
    assert "expected one argument" not in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ 2. the __main__ guard, the lock
def test_run_batch_in_a_bootstrapping_child_says_to_guard_the_call(raw, tmp_path, monkeypatch):
    # What multiprocessing sets while a spawned/forkserver child re-imports the main script.
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(RuntimeError, match='if __name__ == "__main__":'):
        _api(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_unguarded_script_with_worker_processes_names_the_guard(raw, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from specwidgets.batch import run_batch
        run_batch({[str(p) for p in raw["science"]]!r}, {str(raw["arc"][0])!r}, masks=[{MASK!r}],
                  out_dir="out", workers=1, progress=False, read_noise=4.0)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode != 0
    assert "BatchLockedError" not in proc.stderr and "another specwidgets batch run" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError") and 'if __name__ == "__main__":' in last, proc.stderr
    # The workers said why too (each re-ran the script and stopped at run_batch).
    assert "run_batch was called while a worker process was starting" in proc.stderr
    assert not (tmp_path / "out").exists()  # no folder, no lock left behind


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_left_by_a_dead_run_is_taken_over_and_said(raw, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    pid = _dead_pid()
    (out / batch.LOCK_NAME).write_text(f"{pid} {socket.gethostname()}\n")
    summary = _api(raw, out, report=True)
    assert summary.ok and len(summary.done) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "took over the lock" in line]
    assert len(lines) == 1 and f"pid {pid}" in lines[0] and "no longer running" in lines[0]
    assert not (out / batch.LOCK_NAME).exists()  # released and removed at the end


def test_a_run_that_fails_before_it_starts_leaves_no_lock(raw, tmp_path, monkeypatch):
    def no_cluster(*args, **kwargs):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(batch, "_open_client", no_cluster)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="Nanny"):
        _api(raw, out)
    assert not out.exists()  # made by this run, empty: removed
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError, match="Nanny"):
        _api(raw, kept)
    assert kept.is_dir() and not any(kept.iterdir())


def test_a_live_run_in_another_process_still_holds_the_folder(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = textwrap.dedent(f"""
        import sys, time
        from specwidgets.batch.runner import _DirectoryLock
        with _DirectoryLock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", holder], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(BatchLockedError, match=f"pid {proc.pid}"):
            _api(raw, out)
    finally:
        proc.send_signal(signal.SIGKILL)  # dies holding it: the file stays, the flock goes
        proc.wait()
    assert (out / batch.LOCK_NAME).exists()
    assert _api(raw, out).ok
    assert not (out / batch.LOCK_NAME).exists()


def test_without_flock_the_recorded_holder_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "_flock", lambda fd: None)  # a filesystem that refuses flock
    lock_file = tmp_path / batch.LOCK_NAME
    lock_file.write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live holder: this process
    with pytest.raises(BatchLockedError, match=f"pid {os.getpid()}"):
        with batch._DirectoryLock(tmp_path):
            pass
    lock_file.write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    with batch._DirectoryLock(tmp_path) as lock:
        assert "no longer running" in lock.taken_over
        assert lock_file.read_text().split() == [str(os.getpid()), socket.gethostname()]
    assert not lock_file.exists()


def test_a_run_that_opened_a_lock_file_just_removed_opens_it_again(tmp_path):
    """The holder removes the file on release: a run that opened it before must not lock the orphan."""
    first = batch._DirectoryLock(tmp_path).__enter__()
    early = os.open(first.path, os.O_RDWR)
    first.__exit__(None, None, None)
    assert batch._flock(early) is True and not batch._same_file(early, first.path)
    os.close(early)
    with batch._DirectoryLock(tmp_path) as again:
        assert again.path.exists() and not again.taken_over


def test_a_holder_whose_file_was_deleted_leaves_the_next_runs_lock_alone(tmp_path):
    """Lock file deleted by hand while A runs, B locks a new one: A's release must not remove B's."""
    first = batch._DirectoryLock(tmp_path).__enter__()
    first.path.unlink()
    second = batch._DirectoryLock(tmp_path).__enter__()
    first.__exit__(None, None, None)
    assert second.path.exists()
    with pytest.raises(batch.BatchLockedError):
        batch._DirectoryLock(tmp_path).__enter__()
    second.__exit__(None, None, None)
    assert not second.path.exists()


def test_the_command_reports_a_cluster_that_did_not_start_as_an_error(raw, tmp_path, monkeypatch, capsys):
    """The `specwidgets` console script is no user script: a cluster's failure is an error line, exit 2."""
    import types

    def boom(*args, **kwargs):
        raise TimeoutError("Nanny failed to start in 60 seconds")

    monkeypatch.setattr("dask.distributed.LocalCluster", boom)
    console = types.ModuleType("__main__")
    console.__file__ = "/usr/bin/specwidgets"
    console.main = batch_cli.main  # what pip's console script imports
    monkeypatch.setitem(sys.modules, "__main__", console)
    parser = argparse.ArgumentParser(prog="specwidgets")
    add_batch_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["batch", *map(str, raw["science"]), "--arc", str(raw["arc"][0]), "--mask", "12:26",
                              "--out", str(tmp_path / "out"), "--workers", "2", "--no-progress"])
    assert run_batch_command(args) == 2
    assert "Nanny failed to start" in capsys.readouterr().err


# ------------------------------------------------------------------ 3, 4. arguments that name nothing; no folder
@pytest.mark.parametrize("which", ["science", "arc", "bias"])
def test_command_refuses_a_pattern_that_matches_nothing(raw, tmp_path, monkeypatch, capsys, which):
    pattern = str(raw["folder"] / "sci_*.fitz")
    files = {"science": [*raw["science"]], "arc": [*raw["arc"]], "bias": []}
    files[which] = [pattern]
    argv = [*files["science"], "--arc", *files["arc"], *(["--bias", *files["bias"]] if files["bias"] else []),
            "--mask", "12:26", "--out", tmp_path / "out"]
    assert _cli(monkeypatch, argv) == 2
    err = capsys.readouterr().err
    assert f"no {which} file matches the pattern {pattern!r}" in err
    assert "exposure(s)" not in err
    assert not (tmp_path / "out").exists()


def test_command_refuses_a_path_that_does_not_exist(raw, tmp_path, monkeypatch, capsys):
    missing = raw["folder"] / "sci_99.fits"
    assert _cli(monkeypatch, [raw["science"][0], missing, "--arc", *raw["arc"], "--mask", "12:26",
                              "--out", tmp_path / "out"]) == 2
    assert f"science file {str(missing)!r} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_batch_refuses_a_pattern_that_matches_nothing(raw, tmp_path):
    with pytest.raises(FileNotFoundError, match="matches the pattern"):
        run_batch(str(raw["folder"] / "*.fitz"), raw["arc"], masks=[MASK], out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_refused_arguments_and_calibrations_make_no_output_folder(raw, tmp_path, monkeypatch, capsys):
    out = tmp_path / "deep" / "out"
    with pytest.raises(FileNotFoundError, match="nope.fits"):
        _api(raw, out, arc=[tmp_path / "nope.fits"])
    with pytest.raises(ValueError, match="out of range"):
        _api(raw, out, masks=[(30, 90)])
    assert _cli(monkeypatch, [*raw["science"], "--arc", *raw["arc"], "--mask", "30:90", "--out", out]) == 2
    assert "out of range" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists()


# ------------------------------------------------------------------ 5. which settings differ, said once
def test_a_rerun_with_other_settings_names_them(raw, tmp_path, capsys):
    out = tmp_path / "out"
    assert _api(raw, out).ok
    summary = _api(raw, out, masks=[(10, 28)], method="median", dtype="float64", report=True)
    assert len(summary.failed) == 2
    for _, message in summary.failed:
        assert "mask was 12:26, now 10:28" in message and "method was bspline, now median" in message
        assert "dtype was float32, now float64" in message and "SWCONFIG" not in message
    err = capsys.readouterr().err
    for _, message in summary.failed:
        assert err.count(message) == 1, err  # printed as it happened, not again in the summary
    assert "failed (reasons above): sci_00.fits, sci_01.fits" in err
    # A setting the header does not record (an instrument option): the hashes, as before.
    summary = _api(raw, out, instrument_options={"gain": 2.0})
    assert all("other settings (SWCONFIG" in message for _, message in summary.failed)


def test_the_summary_keeps_the_reasons_by_default(tmp_path):
    summary = batch.BatchSummary(out_dir=tmp_path, n_inputs=1, failed=[("a.fits", "it broke")])
    assert "a.fits: it broke" in summary.report()
    assert "it broke" not in summary.report(reasons=False) and "a.fits" in summary.report(reasons=False)


def test_the_summary_names_suspect_fits_once_when_their_reasons_were_printed(tmp_path):
    # Done in this run: the reasons were printed as each finished, so the closing summary names it only;
    # a skipped output's reasons (from its header) were not printed, so they stay.
    summary = batch.BatchSummary(out_dir=tmp_path, n_inputs=2, done=["a.fits"], skipped=["b.fits"],
                                 suspect=[("a.fits", ["row 5 is bright"]), ("b.fits", ["column 7 is off"])])
    short = summary.report(reasons=False)
    assert "row 5 is bright" not in short and "suspect (reasons above): a.fits" in short
    assert "suspect b.fits: column 7 is off" in short and "good 0, suspect 2" in short
    assert "suspect a.fits: row 5 is bright" in summary.report()


# ------------------------------------------------------------------ 6. warnings
def test_command_prints_warnings_without_a_source_path(raw, tmp_path, monkeypatch, capsys):
    previous = warnings.showwarning
    # A guess off the image warns; the out-of-range mask then stops the run before any fit.
    code = _cli(monkeypatch, [*raw["science"], "--arc", *raw["arc"], "--guesses", "60,150,240,5000",
                              "--mask", "30:90", "--out", tmp_path / "out"])
    assert code == 2
    err = capsys.readouterr().err
    assert "warning: ignoring guesses off the image" in err.splitlines()[0]
    assert ".py:" not in err and "UserWarning" not in err
    assert warnings.showwarning is previous


@pytest.mark.goodman
@pytest.mark.skipif(not goodman_available(), reason="Goodman sample not on this machine")
def test_command_prints_the_saturated_arc_warning_plainly(tmp_path, monkeypatch, capsys):
    from specwidgets.io.sample_data import goodman_path

    folder = goodman_path(download=False)
    code = _cli(monkeypatch, [folder / "spec_PKSJ0049_5738", "--arc", folder / "lamp", "--instrument", "goodman",
                              "--crop", "680:800", "--mask", "20:500", "--out", tmp_path / "out"])
    assert code == 2
    err = capsys.readouterr().err
    assert any(line.startswith("warning: 1 saturated arc line(s) left out") for line in err.splitlines()), err
    assert "calibrations.py" not in err and "UserWarning" not in err


def test_run_batch_warnings_point_at_the_callers_line(raw, tmp_path):
    with pytest.warns(UserWarning, match="off the image") as caught:
        with pytest.raises(ValueError, match="out of range"):
            _api(raw, tmp_path / "out", guesses=[60, 150, 240, 5000], masks=[(30, 90)])
    ours = [w for w in caught if "off the image" in str(w.message)]
    assert ours and all(w.filename == __file__ for w in ours), [(w.filename, w.lineno) for w in ours]


# ------------------------------------------------------------------ instrument options on the command line
def test_command_trims_and_turns_raw_frames_of_an_unknown_instrument(frames, tmp_path, monkeypatch, capsys):
    """--trimsec keeps a section (an overscan out), --dispersion-axis 0 turns frames stored the other way."""
    folder = tmp_path / "raw"
    folder.mkdir()

    def stored(image):  # 6 overscan rows below, then transposed: dispersion along the stored rows
        return np.vstack([image, np.full((6, image.shape[1]), 1000.0)]).T

    science = [_write(folder / f"sci_{i:02d}.fits", stored(frames.science[i])) for i in range(2)]
    arc = _write(folder / "arc_01.fits", stored(frames.arc))
    section = f"[1:{SHAPE[0]},1:{SHAPE[1]}]"  # x (stored columns) = the slit's rows, before turning
    out = tmp_path / "out"
    code = _cli(monkeypatch, [*science, "--arc", arc, "--mask", "12:26", "--read-noise", "4", "--out", out,
                              "--workers", "1", "--trimsec", section, "--dispersion-axis", "0"])
    assert code == 0, capsys.readouterr().err
    files = _outputs(out)
    # The outputs lie as the inputs do (turned back), trimmed.
    assert len(files) == 2 and all(fits.getdata(p, "SCI").shape == SHAPE[::-1] for p in files)
    # Every pixel kept ("all"), the overscan is in: the frames are wider than the section.
    out_all = tmp_path / "out_all"
    code = _cli(monkeypatch, [*science, "--arc", arc, "--mask", "12:26", "--read-noise", "4", "--out", out_all,
                              "--workers", "1", "--trimsec", "all", "--dispersion-axis", "0"])
    capsys.readouterr()
    assert code == 0 and fits.getdata(_outputs(out_all)[0], "SCI").shape == (SHAPE[1], SHAPE[0] + 6)


def test_outputs_record_the_gain_that_took_the_input_to_electrons(frames, tmp_path):
    """GAIN in the output is the fit's (1 in electrons); SWINGAIN keeps the raw file's, to go back to ADU."""
    folder = tmp_path / "adu"
    folder.mkdir()

    def adu(name, image):
        path = folder / name
        fits.PrimaryHDU(np.asarray(image) / 2.0, fits.Header({"GAIN": 2.0, "RDNOISE": 4.0})).writeto(path)
        return path

    science = [adu(f"sci_{i:02d}.fits", frames.science[i]) for i in range(2)]
    summary = run_batch(science, [adu("arc_01.fits", frames.arc)], masks=[MASK], out_dir=tmp_path / "out",
                        workers=1, processes=False, progress=False)
    assert summary.ok
    header = fits.getheader(_outputs(tmp_path / "out")[0])
    assert header["SWUNIT"] == "electron" and header["SWINGAIN"] == 2.0 and header["SWGAIN"] == 1.0
    # Frames left in ADU (no gain known): nothing to record.
    plain = [_write(folder / f"plain_{i}.fits", frames.science[i]) for i in range(2)]
    summary = run_batch(plain, [_write(folder / "plain_arc.fits", frames.arc)], masks=[MASK],
                        out_dir=tmp_path / "out2", workers=1, processes=False, progress=False, read_noise=4.0)
    assert summary.ok and "SWINGAIN" not in fits.getheader(_outputs(tmp_path / "out2")[0])


def test_the_local_cluster_does_not_ask_for_port_8787(monkeypatch):
    """Beside another Dask cluster (a second run, a notebook's), batch says nothing about its dashboard's port."""
    import socket
    import warnings

    from specwidgets.batch.runner import _open_client

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))
        holder.listen()
    except OSError:
        pass  # taken already: the situation this test sets up
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client, to_close = _open_client(1, None, None, processes=False)
            try:
                link = client.dashboard_link
            finally:
                for item in to_close:
                    item.close()
    finally:
        holder.close()
    assert not [w for w in caught if "already in use" in str(w.message)], [str(w.message) for w in caught]
    assert ":8787/" not in link


def test_a_folder_as_science_leaves_out_its_calibration_frames(raw, tmp_path, monkeypatch, capsys):
    """``specwidgets batch FOLDER``: bias and arc frames of the folder (by name or IMAGETYP) and files
    given as calibrations are not fit as science, and each is named with the option that takes it."""
    night = tmp_path / "night"
    night.mkdir()
    for k, path in enumerate(raw["science"][:2]):
        shutil.copy(path, night / f"obj_{k}.fits")
    shutil.copy(raw["arc"][0], night / "arc_0.fits")
    zero = np.random.default_rng(5).normal(0.0, 4.0, SHAPE)  # bias-free frames: a bias of noise alone
    fits.writeto(night / "bias_0.fits", zero)
    typed = night / "frame_0001.fits"  # named like science, a bias by its header
    fits.writeto(typed, zero, fits.Header([("IMAGETYP", "BIAS")]))
    # A table among the frames (a catalogue): not a frame; it failed, and the run exited 1.
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.arange(3.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(night / "standards.fits")
    out = tmp_path / "out"
    code = _cli(monkeypatch, [night, "--arc", night / "arc_0.fits", "--mask", "12:26", "--read-noise", "4",
                              "--out", out, "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert sorted(p.name for p in _outputs(out)) == ["obj_0_sky.fits", "obj_1_sky.fits"]
    assert "arc_0.fits: given as arc, so not science" in err
    assert "standards.fits: holds no 2D image (a table?), so not science" in err
    # No --bias given: the folder's bias frames (by name or by IMAGETYP) are used, and said to be.
    assert "the science folder's bias frame(s) used as --bias: bias_0.fits, frame_0001.fits" in err
    assert all(fits.getval(p, "SWNBIAS") == 2 for p in _outputs(out))
    # Given --bias: the folder's own are left out, each named with the option that takes it.
    code = _cli(monkeypatch, [night, "--arc", night / "arc_0.fits", "--bias", night / "bias_0.fits", "--mask",
                              "12:26", "--read-noise", "4", "--out", tmp_path / "out3", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "frame_0001.fits: IMAGETYP = 'BIAS', so not science (give it as --bias to use it" in err
    # A file named on its own (or by a pattern) is taken as the user gave it, whatever its name.
    files, left_out, found = batch._science_files([night / "bias_0.fits", str(night / "frame_*.fits")], out, {})
    assert [p.name for p in files] == ["bias_0.fits", "frame_0001.fits"] and left_out == []
    assert not any(found.values())
    # The kind comes from the card: an arc typed 'Line' or ESO's 'LAMP,WAVE' is an arc, a lamp flat a flat.
    for name, card, value in (("f2.fits", "IMAGETYP", "Line"), ("f3.fits", "HIERARCH ESO DPR TYPE", "LAMP,WAVE"),
                              ("f4.fits", "OBSTYPE", "LAMPFLAT")):
        header = fits.Header()
        header[card] = value
        fits.writeto(night / name, zero, header)
    files, left_out, found = batch._science_files(night, out, {})
    assert sorted(p.name for p, _ in found["arc"]) == ["arc_0.fits", "f2.fits", "f3.fits"]
    assert [p.name for p, _ in found["flat"]] == ["f4.fits"]
    assert sorted(p.name for p in files) == ["obj_0.fits", "obj_1.fits"]


def test_frames_whose_wavelength_runs_down_the_rows_are_turned(frames, tmp_path, monkeypatch, capsys):
    """A generic camera storing the dispersion along y, without a DISPAXIS card: batch turns every frame
    (the arc tells), says so, and the sky is the one fit on the frames as specwidgets wants them."""
    turned = tmp_path / "turned"
    turned.mkdir()
    science = [_write(turned / f"sci_{i:02d}.fits", frames.science[i].T) for i in range(2)]
    arc = _write(turned / "arc_01.fits", frames.arc.T)
    out = tmp_path / "out"
    code = _cli(monkeypatch, [*science, "--arc", arc, "--mask", "12:26", "--read-noise", "4", "--out", out,
                              "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "the arc's lines lie along the rows (arc_01.fits" in err
    # Every output lies as its input does (turned back: trial L2 found them transposed), and says so.
    header = fits.getheader(_outputs(out)[0])
    assert header["SWDISPAX"] == 0 and header["SWTRANSP"] is True and header["SWROT90"] == 0
    images = {name: fits.getdata(_outputs(out)[0], name) for name in ("SCI", "SKY", "VAR", "MASK")}
    assert all(image.shape == SHAPE[::-1] for image in images.values())
    np.testing.assert_allclose(images["SCI"] + images["SKY"], frames.science[0].T, rtol=1e-6, atol=1e-3)
    reference = run_batch([_write(tmp_path / "sci_00.fits", frames.science[0])],
                          [_write(tmp_path / "arc_01.fits", frames.arc)], masks=[MASK], out_dir=tmp_path / "ref",
                          workers=1, processes=False, progress=False, read_noise=4.0)
    assert reference.exit_code == 0
    assert "SWTRANSP" not in fits.getheader(_outputs(tmp_path / "ref")[0])
    for name, image in images.items():
        np.testing.assert_allclose(image.T, fits.getdata(_outputs(tmp_path / "ref")[0], name), atol=1e-6)
    # A second run keeps them: complete, of the shape the turned frames give.
    code = _cli(monkeypatch, [*science, "--arc", arc, "--mask", "12:26", "--read-noise", "4", "--out", out,
                              "--workers", "1"])
    assert code == 0 and "skipped" in capsys.readouterr().err
    # Told how the frames lie, batch reads them as stored (and the arc then has no line along a row).
    code = _cli(monkeypatch, [*science, "--arc", arc, "--mask", "12:26", "--read-noise", "4", "--out",
                              tmp_path / "out2", "--workers", "1", "--dispersion-axis", "1"])
    err = capsys.readouterr().err
    assert code != 0 and "lie along the rows (arc_01" not in err
    assert "load with dispersion_axis=0: --dispersion-axis 0" in err  # the flag, on the command line


def test_a_dispaxis_card_the_arc_contradicts_is_not_followed_and_named(frames, tmp_path, monkeypatch, capsys):
    """Frames stored as specwidgets wants them (dispersion along x) with a DISPAXIS = 2 card (trial F1): the
    card turned them, the arc's lines then lay across the frame, and the advice was --dispersion-axis 0, the
    way they were read. The arc's lines decide: the run reads them as stored, the note names the card and
    the option that follows it, and the skies are those of --dispersion-axis 1."""
    folder = tmp_path / "card"
    folder.mkdir()
    paths = []
    for name, data in (("sci_00.fits", frames.science[0]), ("arc_01.fits", frames.arc)):
        fits.PrimaryHDU(np.asarray(data), fits.Header({"DISPAXIS": 2})).writeto(folder / name)
        paths.append(folder / name)
    args = [paths[0], "--arc", paths[1], "--mask", "12:26", "--read-noise", "4", "--workers", "1"]
    code = _cli(monkeypatch, [*args, "--out", tmp_path / "out"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "the DISPAXIS = 2 card of arc_01.fits says the wavelength runs along the image's y axis" in err
    assert "pass --dispersion-axis 0 (instrument_options={'dispersion_axis': 0}) to follow the card" in err
    code = _cli(monkeypatch, [*args, "--out", tmp_path / "out1", "--dispersion-axis", "1"])
    assert code == 0, capsys.readouterr().err
    np.testing.assert_array_equal(fits.getdata(_outputs(tmp_path / "out")[0], "SKY"),
                                  fits.getdata(_outputs(tmp_path / "out1")[0], "SKY"))
    # Told to transpose on the command line, it does, and the advice names the option that undoes it.
    code = _cli(monkeypatch, [*args, "--out", tmp_path / "out0", "--dispersion-axis", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "read transposed already (--dispersion-axis 0" in err and "--dispersion-axis 1 (" in err


def test_no_bias_note_says_the_overscan_was_subtracted(frames, tmp_path):
    """Frames with an overscan (BIASSEC) and no bias frames (trial F1): the note said "nothing is subtracted"
    while each output's HISTORY recorded the overscan's subtraction. It says what was: the overscan level, and
    no master bias."""
    n_rows, n_cols = SHAPE
    folder = tmp_path / "oscan"
    folder.mkdir()
    paths = []
    for name, data in (("sci_00.fits", frames.science[0]), ("arc_01.fits", frames.arc)):
        full = np.full((n_rows, n_cols + 8), 1000.0)
        full[:, :n_cols] += np.asarray(data)
        header = fits.Header({"BIASSEC": f"[{n_cols + 1}:{n_cols + 8},1:{n_rows}]", "TRIMSEC": f"[1:{n_cols},1:{n_rows}]"})
        fits.PrimaryHDU(full, header).writeto(folder / name)
        paths.append(folder / name)
    summary = run_batch([paths[0]], [paths[1]], masks=[MASK], out_dir=tmp_path / "out", workers=1, processes=False,
                        progress=False, read_noise=4.0)
    assert summary.exit_code == 0
    notes = [n for n in summary.notes if n.startswith("no bias frames")]
    assert len(notes) == 1 and "nothing is subtracted" not in notes[0], summary.notes
    assert f"overscan level (BIASSEC [{n_cols + 1}:{n_cols + 8},1:{n_rows}]" in notes[0] and "no master bias" in notes[0]
    assert any("overscan BIASSEC" in str(h) for h in fits.getheader(_outputs(tmp_path / "out")[0])["HISTORY"])
    # Without an overscan, nothing is subtracted, and the note says so.
    summary = run_batch([_write(folder / "plain.fits", frames.science[0])], [_write(folder / "arc_02.fits", frames.arc)],
                        masks=[MASK], out_dir=tmp_path / "out2", workers=1, processes=False, progress=False,
                        read_noise=4.0)
    assert any(n.startswith("no bias frames: nothing is subtracted") for n in summary.notes)


def test_no_arc_and_dispersion_along_the_rows_names_the_option(frames, tmp_path, monkeypatch, capsys):
    """Frames stored with the dispersion along y, no DISPAXIS card and no arc (trial F1): every exposure failed
    with "only 1 sky line(s) found ... give an arc frame", not a word of the orientation. The failure says the
    dispersion seems to run along the rows and names the option that reads the frames transposed."""
    folder = tmp_path / "turned"
    folder.mkdir()
    science = [_write(folder / f"sci_{i:02d}.fits", frames.science[i].T) for i in range(2)]
    code = _cli(monkeypatch, [*science, "--mask", "140:160", "--read-noise", "4", "--out", tmp_path / "out",
                              "--workers", "1"])
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("failed: sci_")]
    assert code == 1 and len(failed) == 2, err
    assert all("sky lines could not be traced" in line and "the dispersion seems to run along the rows" in line
               and "--dispersion-axis 0 (instrument_options={'dispersion_axis': 0}) reads them transposed" in line
               for line in failed), failed
    # The option it names reads them.
    code = _cli(monkeypatch, [*science, "--mask", "12:26", "--read-noise", "4", "--out", tmp_path / "out0",
                              "--workers", "1", "--dispersion-axis", "0"])
    err = capsys.readouterr().err
    assert code in (0, 3) and "failed: sci_" not in err, err


def test_fit_together_gives_the_stack_fit(raw, frames, tmp_path, monkeypatch, capsys):
    """``--fit-together`` without a session: the science files as one stack, as the page fits its
    exposures (each file on its own otherwise)."""
    import specwidgets as sw

    out = tmp_path / "out"
    code = _cli(monkeypatch, [*raw["science"], "--arc", *raw["arc"], "--mask", "12:26", "--read-noise", "4", "--out",
                              out, "--workers", "1", "--fit-together"])
    err = capsys.readouterr().err
    assert code == 0, err
    arc = np.asarray(fits.getdata(raw["arc"][0]), float)
    locs, _ = sw.find_cal_lines(arc)
    warp = sw.generate_warp_model(arc, locs)
    stack = np.stack([np.asarray(fits.getdata(p), float) for p in raw["science"]])
    together = sw.fit_sky(stack, warp, [MASK], read_noise=4.0)
    for k, path in enumerate(_outputs(out)):
        np.testing.assert_allclose(fits.getdata(path, "SKY"), together.background[k], rtol=1e-6, atol=1e-6)
    alone = run_batch(raw["science"], raw["arc"], masks=[MASK], out_dir=tmp_path / "alone", workers=1,
                      processes=False, progress=False, read_noise=4.0)
    assert alone.exit_code == 0
    assert not np.allclose(fits.getdata(_outputs(tmp_path / "alone")[0], "SKY"), together.background[0])


# ------------------------------------------------------------------ --bad-pixels
def test_bad_pixels_of_each_science_files_dq_extension_are_left_out(frames, tmp_path, monkeypatch, capsys):
    """Science files with a data-quality plane (Gemini's SCI + DQ): a hot column it flags went into the
    sky fit, named only by the fit's own column check; the arcs have no DQ plane and are read as before."""
    folder = tmp_path / "raw"
    folder.mkdir()
    science = []
    for i in range(2):
        sci = np.asarray(frames.science[i], np.float32).copy()
        sci[:, 140] += 5000.0  # a hot column the pipeline flagged
        dq = np.zeros(SHAPE, np.int16)
        dq[:, 140] = 1
        path = folder / f"sci_{i:02d}.fits"
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, name="SCI", ver=1),
                      fits.ImageHDU(dq, name="DQ", ver=1)]).writeto(path)
        science.append(path)
    arc = _write(folder / "arc_01.fits", frames.arc)
    common = [*science, "--arc", arc, "--mask", "12:26", "--read-noise", "4", "--workers", "1"]

    assert _cli(monkeypatch, [*common, "--out", tmp_path / "plain"]) == 0
    err = capsys.readouterr().err
    assert err.count("have a DQ extension (data quality) that is not applied") == 1
    assert "--bad-pixels DQ" in err

    out = tmp_path / "dq"
    assert _cli(monkeypatch, [*common, "--bad-pixels", "DQ", "--out", out]) == 0
    err = capsys.readouterr().err
    assert "not applied" not in err and "140" not in err  # no column named: it was left out, not found
    for path in _outputs(out):
        mask = fits.getdata(path, "MASK")
        assert (mask[:, 140] & 4).all() and not (mask[:, 139] & 4).any()
        assert np.isfinite(fits.getdata(path, "SKY")).all()
        # What reading did to the file is in the output's header too.
        history = [str(h) for h in fits.getheader(path).get("HISTORY", [])]
        assert any(h.startswith("specwidgets: 40 pixels flagged in the DQ extension set to NaN") for h in history)
    # The same command resumes; without --bad-pixels the outputs are other settings'.
    assert _cli(monkeypatch, [*common, "--bad-pixels", "DQ", "--out", out]) == 0
    assert "skipped (already complete) 2" in capsys.readouterr().err
    assert _cli(monkeypatch, [*common, "--out", out]) == 1
    assert capsys.readouterr().err.count("exists, made with other settings") == 2


def test_repeated_calibration_options_add_their_files():
    """``--arc HgAr.fits --arc Ne.fits --arc CuAr.fits``: every lamp is used (the last alone was, silently: trial
    K2 found SWNARC = 1 and a third of the lines), as a repeated ``--mask`` adds its range."""
    parser = argparse.ArgumentParser(prog="specwidgets")
    add_batch_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["batch", "sci.fits", "--arc", "HgAr.fits", "--arc", "Ne.fits", "CuAr.fits",
                              "--bias", "b0.fits", "--bias", "b1.fits", "--flat", "f0.fits", "--flat", "f1.fits",
                              "--mask", "52:69", "--out", "sky"])
    assert args.arc == ["HgAr.fits", "Ne.fits", "CuAr.fits"]
    assert args.bias == ["b0.fits", "b1.fits"] and args.flat == ["f0.fits", "f1.fits"]
    again = parser.parse_args(["batch", "sci.fits", "--arc", "a.fits", "--mask", "5:9", "--out", "sky"])
    assert again.arc == ["a.fits"]  # the default list is not shared between parses


def test_command_gain_estimate_leaves_the_headers_gain_unapplied(tmp_path, frames, monkeypatch, capsys):
    """``--gain estimate`` (as ``--read-noise estimate``): the headers' gain is not applied, the frames stay in
    their units and the sky fit estimates it (a header's GAIN that is wrong had no way out in batch)."""
    folder = tmp_path / "raw"
    folder.mkdir()
    for i in range(2):
        fits.PrimaryHDU(np.asarray(frames.science[i]), fits.Header({"GAIN": 3.0})).writeto(folder / f"sci_{i}.fits")
    fits.PrimaryHDU(np.asarray(frames.arc), fits.Header({"GAIN": 3.0})).writeto(folder / "arc_1.fits")
    out = tmp_path / "out"
    code = _cli(monkeypatch, [folder / "sci_0.fits", folder / "sci_1.fits", "--arc", folder / "arc_1.fits", "--mask",
                              "12:26", "--gain", "estimate", "--out", out, "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    files = _outputs(out)
    assert len(files) == 2
    for path in files:
        assert fits.getval(path, "SWUNIT") == "adu"
        assert "estimated" in fits.getval(path, "NOISESRC")
        assert 0.5 < fits.getval(path, "SWGAIN") < 2.0  # (estimated: not the header's 3)
    with pytest.raises(SystemExit):
        _cli(monkeypatch, [folder / "sci_0.fits", "--mask", "12:26", "--gain", "high", "--out", out])
    assert "expected a gain in e-/ADU or 'estimate'; got 'high'" in capsys.readouterr().err
