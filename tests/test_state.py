import numpy as np
import pytest

from specwidgets import fit_sky
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
    # No arc: the warp would come from the sky lines; a frame without any says so.
    state = SkyState(np.ones((10, 100)))
    assert "arc" in state.error and state.result is None
    with pytest.raises(ValueError, match="shape"):
        SkyState(np.ones((10, 100)), np.ones((11, 100)))


# ---------------------------------------------------------------- RowRanges in the state
def test_mask_is_one_rowranges_validated_on_assignment(state, monkeypatch):
    import specwidgets.interactive.state as state_module
    from specwidgets.core.rows import RowRanges

    received = []
    real = state_module.fit_sky
    monkeypatch.setattr(state_module, "fit_sky", lambda *a, **k: received.append(a[2]) or real(*a, **k))
    state.mask_region = "10:20, 30:"
    assert isinstance(state.mask_region, RowRanges) and state.mask_region == [(10, 20), (30, 60)]
    assert received == [state.mask_region] and received[0] is state.mask_region
    assert state.result.mask_region is state.mask_region
    fits = state.n_sky_fits
    before = state.mask_region
    for bad, words in (([(50, 70)], "out of range"), ("rows", "not row-range text"), ([(0, 60)], "covers every"),
                       ([(1.5, 3)], "pair of row indices")):
        state.mask_region = bad
        assert words in state.error and state.mask_region is before and state.n_sky_fits == fits, bad


# ---------------------------------------------------------------- edge cases
def test_setting_science_refits(state):
    fits, warps = state.n_sky_fits, state.n_warp_fits
    old = state.background
    state.exposure = 1
    state.science = state.science[:1] * 2.0
    assert state.exposure == 0  # the one shown still exists
    assert state.n_sky_fits == fits + 1 and state.n_warp_fits == warps
    assert state.background.shape == (1, 60, 400) and not np.array_equal(old[:1], state.background)
    with pytest.raises(Exception, match="shape"):
        state.science = np.zeros((2, 50, 400))


def test_setting_arc_refits_warp_and_sky(state):
    fits, warps = state.n_sky_fits, state.n_warp_fits
    state.arc = state.arc * 1.5
    assert state.n_warp_fits == warps + 1 and state.n_sky_fits == fits + 1 and state.error == ""


def test_nested_hold_fits_once(state):
    fits = state.n_sky_fits
    with state.hold():
        state.mask_region = [(12, 30)]
        with state.hold():
            state.method = "median"
            with state.hold():
                state.mask_region = [(14, 30)]
        assert state.n_sky_fits == fits  # inner holds do not fit
    assert state.n_sky_fits == fits + 1 and state.result.method == "median"
    assert state.result.mask_region == [(14, 30)]


def test_no_exception_reaches_the_caller_of_an_observer(state, monkeypatch):
    import specwidgets.interactive.state as state_module

    good = state.result

    def broken(*args, **kwargs):
        raise RuntimeError("numba kernel fell over")

    monkeypatch.setattr(state_module, "fit_sky", broken)
    state.mask_region = [(11, 30)]  # no exception here
    assert state.error == "RuntimeError: numba kernel fell over" and state.result is good
    monkeypatch.setattr(state_module, "fit_sky", lambda *a, **k: 1 / 0)
    state.method = "median"
    assert "ZeroDivisionError" in state.error and state.result is good and not state.busy


def test_switching_back_to_a_method_shows_its_fit_again(state):
    """Same frames, warp, mask and noise: the other method's last fit is shown again, not refit."""
    first = state.result
    state.method = "median"
    median = state.result
    assert state.n_sky_fits == 2 and median.method == "median"
    state.method = "bspline"
    assert state.n_sky_fits == 2 and state.result is first
    state.method = "median"
    assert state.n_sky_fits == 2 and state.result is median
    # A new mask: the other method's fit no longer applies.
    state.mask_region = [(10, 30)]
    assert state.n_sky_fits == 3
    state.method = "bspline"
    assert state.n_sky_fits == 4 and state.result.mask_region == [(10, 30)]
    # A changed option refits too, and a fit shown again is what a fresh fit gives.
    state.spatial_order = 1
    assert state.n_sky_fits == 5
    state.spatial_order = None
    assert state.n_sky_fits == 6
    fresh = fit_sky(state.science, state.warp_model, state.mask_region, read_noise=4.0)
    np.testing.assert_array_equal(state.result.background, fresh.background)


def test_line_search_warnings_point_at_the_users_line():
    """A saturated arc line is reported at the line that made the state (a notebook cell), not inside the package."""
    frames = make_synthetic_longslit(shape=(60, 400), n_arc_lines=8, seed=1)
    clipped = np.minimum(frames.arc, 0.25 * frames.arc.max())  # two lines flat-topped
    with pytest.warns(UserWarning, match="saturated arc line") as caught:
        SkyState(frames.science, clipped, mask_region=[frames.trace_rows])
    assert {w.filename for w in caught if "saturated" in str(w.message)} == {__file__}
