import numpy as np
import pytest

from specwidgets.interactive.state import SkyState
from specwidgets.io.synthetic import make_synthetic_longslit


@pytest.fixture()
def state():
    frames = make_synthetic_longslit(shape=(60, 400), n_exposures=2, tilt=2.0, n_arc_lines=10, seed=8)
    return SkyState(frames.science, frames.arc, mask_region=[frames.trace_rows], read_noise=4.0)


def test_initial_fit(state):
    assert state.error == ""
    assert state.warp_model is not None and state.background.shape == (2, 60, 400)
    assert state.n_line_searches == 1 and state.n_warp_fits == 1 and state.n_sky_fits == 1


def test_mask_change_refits_sky_only(state):
    old = state.background
    state.mask_region = [(10, 30)]
    assert state.n_sky_fits == 2 and state.n_warp_fits == 1
    assert not np.array_equal(old, state.background)
    assert state.masks == [(10, 30)]


def test_pair_is_accepted_as_one_range(state):
    state.mask_region = (5, 15)
    assert state.masks == [(5, 15)]


def test_guess_change_refits_warp_then_sky(state):
    state.guesses = list(state.guesses[:-1])
    assert state.n_warp_fits == 2 and state.n_sky_fits == 2


def test_threshold_change_searches_lines_once(state):
    state.std_variation = 30.0
    assert state.n_line_searches == 2 and state.n_warp_fits == 2 and state.n_sky_fits == 2


def test_error_keeps_last_good_result(state):
    good = state.background
    state.mask_region = [(0, 60)]
    assert "covers every" in state.error
    assert state.background is good
    state.guesses = [5000.0]
    assert "off the image" in state.error
    assert state.background is good
    state.mask_region = [(20, 40)]
    assert state.error == "" and state.background is not good


def test_hold_recomputes_once(state):
    with state.hold():
        state.mask_region = [(12, 30)]
        state.method = "median"
    assert state.n_sky_fits == 2
    assert state.result.method == "median"


def test_bad_construction():
    with pytest.raises(ValueError, match="arc"):
        SkyState(np.ones((10, 100)))
    with pytest.raises(ValueError, match="shape"):
        SkyState(np.ones((10, 100)), np.ones((11, 100)))
