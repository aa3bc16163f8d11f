"""The Voila dashboard: choose the data, then work on it in a :class:`~specwidgets.interactive.Dashboard`.

``specwidgets dashboard [DATA_FOLDER]`` serves :data:`NOTEBOOK` (this
folder's ``dashboard.ipynb``) with Voila; the notebook's one code cell is
``DashboardApp.from_environment()``. Voila renders notebooks without
arguments, so the launcher passes ``DATA_FOLDER`` in the environment
variable :data:`DATA_ENV`.

Data sources:

* the embedded synthetic demo (the default: no files needed);
* the SOAR/Goodman sample (:mod:`specwidgets.io.sample_data`; found locally, or
  downloaded and checksummed when it is not);
* a folder of the user's FITS files: an instrument, name tags for the arc,
  bias and science frames, the rows to keep, and optionally the rows to mask.

Loading a folder reads one file at a time behind a progress bar; a file that
cannot be read is named in the message area and left out, and nothing the
user types can raise into the page.

Examples
--------
>>> app = DashboardApp()                      # the synthetic demo
>>> app.dashboard.background.shape
(2, 120, 1024)
>>> app.source.value = "folder"
>>> app.folder.value = "/no/such/folder"
>>> app.load()                                # reported, not raised
False
>>> "does not exist" in app.message.value
True
"""

from __future__ import annotations

import contextlib
import html
import os
import time
from pathlib import Path

from ..core.extract import guess_trace_rows
from ..core.rows import RowRanges
from ..io.discovery import find_frames
from ..io.folder import FolderData
from ..io.folder import load_folder as _load_folder

__all__ = [
    "DATA_ENV",
    "NOTEBOOK",
    "DashboardApp",
    "FolderData",
    "find_frames",
    "folder_preset",
    "guess_trace_rows",
    "load_folder",
    "parse_rows",
    "show",
]

#: Environment variable through which the launcher passes DATA_FOLDER.
DATA_ENV = "SPECWIDGETS_DASHBOARD_DATA"

#: Set by the launcher to the folder it was started in: relative folders typed
#: in the page are taken from there (Voila runs the kernel in the package).
CWD_ENV = "SPECWIDGETS_DASHBOARD_CWD"

#: The dashboard notebook Voila serves (shipped inside the package).
NOTEBOOK = Path(__file__).with_name("dashboard.ipynb")


#: Form values for a folder laid out like the Goodman sample.
GOODMAN_PRESET = {
    "instrument": "goodman",
    "arc_tag": "lamp/",
    "bias_tag": "bias/",
    "science_tag": "spec_",
    "flat_tag": "",
    "crop": "680:800",
    "mask": "20:100",
}

#: Form values for any other folder.
DEFAULT_PRESET = {
    "instrument": "generic",
    "arc_tag": "arc",
    "bias_tag": "bias",
    "science_tag": "",
    "flat_tag": "",
    "crop": "",
    "mask": "",
}

#: The sky settings a new Load keeps from the dashboard it replaces (the
#: user's choices, not the frames': see :meth:`DashboardApp.sky_settings`).
KEPT_SKY_SETTINGS = ("method", "spatial_order", "knot_spacing", "reject_sigma")

_MESSAGE_STYLES = {
    "error": "background:#fde8e8;border:1px solid #e0a0a0;color:#8a1c1c",
    "warning": "background:#fff4e0;border:1px solid #e8b060;color:#6b4200",
    "info": "background:#eef6ee;border:1px solid #9cc79c;color:#1d4d1d",
}


# ---------------------------------------------------------------- folder loading
def parse_rows(text, what="rows"):
    """Parse ``"start:stop"`` (or ``"start, stop"``, ``"start-stop"``) into a pair; blank gives None.

    Either end may be left out (``"680:"`` keeps rows 680 to the end).

    Examples
    --------
    >>> parse_rows("680:800"), parse_rows(" 20, 100 "), parse_rows(""), parse_rows("5:")
    ((680, 800), (20, 100), None, (5, None))
    """
    ranges = RowRanges.parse(text or "", what)
    if not ranges:
        return None
    if len(ranges) != 1:
        raise ValueError(f"{what} {text!r}: write one range start:stop, e.g. 680:800 (blank for all rows)")
    start, stop = ranges[0]
    return (start or 0), stop


def _user_path(text):
    """A folder as the user typed it: ``~`` expanded, relative to the launcher's folder."""
    path = Path(str(text).strip()).expanduser()
    if not path.is_absolute() and os.environ.get(CWD_ENV):
        path = Path(os.environ[CWD_ENV]) / path
    return path


def folder_preset(folder):
    """Form values suited to ``folder``: the Goodman sample's layout, or generic defaults."""
    folder = Path(folder).expanduser()
    try:
        goodman = (folder / "bias").is_dir() and (folder / "lamp").is_dir() and any(folder.glob("spec_*"))
    except OSError:
        goodman = False
    return dict(GOODMAN_PRESET if goodman else DEFAULT_PRESET)


def _turns(instrument, data, n):
    """Per science frame of a loaded folder, how the reader turned it (None where it cannot tell)."""
    from specwidgets.io.instruments import Instrument, resolve_instrument

    try:
        reader = resolve_instrument(instrument, **data.instrument_options)
    except (ValueError, TypeError):
        return [None] * n
    if not isinstance(reader, Instrument):
        return [None] * n
    files = data.files.get("science", [])
    headers = list(data.headers) + [None] * n
    return [reader.turn_of(headers[k] or {}, files[k] if k < len(files) else "frame") for k in range(n)]


def load_folder(folder, *args, **kwargs):
    """:func:`specwidgets.io.folder.load_folder` on a folder as the user typed it.

    ``~`` is expanded and a relative folder is taken from the launcher's
    folder (:data:`CWD_ENV`); the arguments are those of
    :func:`specwidgets.io.folder.load_folder`.
    """
    if folder is None or not str(folder).strip():
        raise ValueError("type the folder that holds the FITS files")
    return _load_folder(_user_path(folder), *args, **kwargs)


# ------------------------------------------------------------------------ the app
class _FieldError(ValueError):
    """A form field's value that cannot be used (the page names the field)."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field


@contextlib.contextmanager
def _field(name):
    try:
        yield
    except ValueError as exc:
        raise _FieldError(name, str(exc)) from exc


def _close_tree(widget, seen=None):
    """Close a widget and every widget it holds (their front-end views go too)."""
    import ipywidgets

    seen = set() if seen is None else seen
    if id(widget) in seen:
        return
    seen.add(id(widget))
    for name in getattr(widget, "keys", []):
        try:
            value = getattr(widget, name)
        except Exception:  # noqa: BLE001 - a trait that cannot be read holds no widget
            continue
        items = value if isinstance(value, (list, tuple)) else value.values() if isinstance(value, dict) else [value]
        for item in items:
            if isinstance(item, ipywidgets.Widget):
                _close_tree(item, seen)
    widget.close()


class DashboardApp:
    """The dashboard page: a data chooser above a :class:`~specwidgets.interactive.Dashboard`.

    Parameters
    ----------
    data_folder : str or os.PathLike, optional
        A folder of FITS files to load at once (the launcher's DATA_FOLDER);
        without one the synthetic demo is shown.
    figsize : (float, float), optional
        Passed to the Dashboard.

    Attributes
    ----------
    widget : ipywidgets.VBox
        What the page shows (also what the app displays as).
    dashboard : specwidgets.interactive.Dashboard or None
        The current dashboard.
    source : ipywidgets.ToggleButtons
        ``"demo"``, ``"goodman"`` or ``"folder"``.
    folder, instrument, arc_tag, bias_tag, science_tag, flat_tag, crop, mask : ipywidgets widgets
        The folder form.
    load_button : ipywidgets.Button
    progress : ipywidgets.IntProgress
    message : ipywidgets.HTML
        Errors (unreadable files by name), warnings and what was loaded.
    """

    def __init__(self, data_folder=None, *, figsize=None, data_root=None, output_root=None):
        import ipywidgets as w

        from specwidgets.app.security import DATA_ROOT_ENV, OUTPUT_ROOT_ENV, root_from_environment
        from specwidgets.io.instruments import known_instruments
        from specwidgets.io.sample_data import goodman_available

        self.figsize = figsize
        # Roots confine what the page reads and writes (see specwidgets.app.security);
        # the launcher always sets them. Without one (the app built in the
        # user's own notebook, whose kernel can run anything anyway) paths
        # are taken as typed.
        self.data_root = Path(data_root).resolve() if data_root else root_from_environment(DATA_ROOT_ENV)
        if output_root:
            self.output_root = Path(output_root).resolve()
        else:
            self.output_root = root_from_environment(OUTPUT_ROOT_ENV) or self.data_root
        self.export_overwrite = w.Checkbox(value=False, description="Overwrite", indent=False,
                                           layout=w.Layout(width="100px"))
        self.export_overwrite.add_class("sw-export-overwrite")
        self.dashboard = None
        self.data_label = ""
        self.last_error = ""
        goodman_label = "Goodman sample" if goodman_available() else "Goodman sample (download, 22 MB)"
        self.source = w.ToggleButtons(
            options=[("Synthetic demo", "demo"), (goodman_label, "goodman"), ("FITS folder", "folder")],
            value="demo", style={"button_width": "250px"},
        )
        self.source.add_class("sw-source")
        self.load_button = w.Button(description="Load", icon="upload", button_style="primary",
                                    layout=w.Layout(width="110px"))
        self.load_button.add_class("sw-load")
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="240px", visibility="hidden"))
        self.progress_label = w.HTML()
        self.message = w.HTML(layout=w.Layout(display="none"))
        self.message.add_class("sw-message")

        text = dict(style={"description_width": "90px"}, layout=w.Layout(width="330px"))
        self.folder = w.Text(description="Folder", placeholder="/path/to/night (Enter to fill in the tags)",
                             continuous_update=False, layout=w.Layout(width="672px"),
                             style={"description_width": "90px"})
        self.instrument = w.Dropdown(options=known_instruments(), value="generic", description="Instrument", **text)
        self.arc_tag = w.Text(description="Arc tag", **text)
        self.bias_tag = w.Text(description="Bias tag", placeholder="blank: no bias frames", **text)
        self.science_tag = w.Text(description="Science tag", placeholder="blank: every other file", **text)
        self.flat_tag = w.Text(description="Flat tag", placeholder="blank: no flat fielding", **text)
        self.crop = w.Text(description="Crop rows", placeholder="start:stop (blank: all)", **text)
        self.mask = w.Text(description="Mask rows", placeholder="start:stop (blank: find the trace)", **text)
        self._form_edited = False
        self._applying = False
        self._apply_preset(DEFAULT_PRESET)
        for widget in (self.instrument, self.arc_tag, self.bias_tag, self.science_tag, self.flat_tag, self.crop,
                       self.mask):
            widget.observe(self._on_form_edit, names="value")
        help_text = w.HTML(
            "<span style='font-size:90%;color:#555'>A tag picks the files whose path below the folder "
            "contains it (subfolders one level down are searched too, so <code>lamp/</code> picks a "
            "subfolder). A flat tag divides the science frames by those flats (normalised to their "
            "pixel-to-pixel response, as <code>specwidgets batch --flat</code>). Crop rows are kept of each "
            "trimmed frame; mask rows (of the cropped frame) are kept out of the sky fit.</span>"
        )
        self.folder_form = w.VBox(
            [
                self.folder,
                w.HBox([self.instrument, self.crop]),
                w.HBox([self.arc_tag, self.bias_tag]),
                w.HBox([self.science_tag, self.mask]),
                w.HBox([self.flat_tag]),
                help_text,
            ],
            layout=w.Layout(display="none", border="1px solid #ddd", padding="4px", margin="2px 0"),
        )
        self.folder_form.add_class("sw-folder-form")
        self.body = w.VBox()
        self.body.add_class("sw-body")

        self.source.observe(self._on_source, names="value")
        self.folder.observe(self._on_folder, names="value")
        self.load_button.on_click(lambda _: self.load())

        self.widget = w.VBox(
            [
                w.HBox([self.source, self.load_button, self.progress, self.progress_label]),
                self.folder_form,
                self.message,
                self.body,
            ]
        )
        self.widget.add_class("sw-app")

        if data_folder:
            self.source.value = "folder"
            self.folder.value = self._shown_path(data_folder)
            if self.load():
                return
            failed = self.last_error
            self.load_demo()
            self._say("error", f"Could not load {data_folder}: {failed}\nShowing the synthetic demo instead.")
        else:
            self.load_demo()

    @classmethod
    def from_environment(cls, **kwargs):
        """The app for the launcher: DATA_FOLDER comes from :data:`DATA_ENV` (demo when unset)."""
        return cls(os.environ.get(DATA_ENV) or None, **kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # ---------------------------------------------------------------- form
    def _apply_preset(self, preset):
        self._applying = True
        try:
            self.instrument.value = preset["instrument"]
            self.arc_tag.value = preset["arc_tag"]
            self.bias_tag.value = preset["bias_tag"]
            self.science_tag.value = preset["science_tag"]
            self.flat_tag.value = preset.get("flat_tag", "")
            self.crop.value = preset["crop"]
            self.mask.value = preset["mask"]
        finally:
            self._applying = False

    def _on_form_edit(self, change):
        if not self._applying:
            self._form_edited = True

    def _on_source(self, change):
        self.folder_form.layout.display = None if change["new"] == "folder" else "none"

    def _on_folder(self, change):
        # A new folder fills in tags suited to it, unless the user has set them.
        # Outside the data root nothing is looked at (Load says why).
        try:
            path = self._data_path(change["new"]) if change["new"].strip() else None
        except ValueError:
            return
        if path is not None and path.is_dir() and not self._form_edited:
            self._apply_preset(folder_preset(path))

    # ------------------------------------------------------------ roots
    def _data_path(self, text):
        """The folder typed in the page: inside the data root (when there is one), symlinks resolved."""
        from specwidgets.app.security import inside_root

        if self.data_root is None:
            return _user_path(text)
        return inside_root(text, self.data_root, "data")

    def _relative_to_root(self, text):
        """``text`` with the data root's server path written as ``<data root>`` (users type relative paths)."""
        if self.data_root is None:
            return text
        return text.replace(str(self.data_root), "<data root>")

    def _shown_path(self, folder):
        """``folder`` as the form shows it: relative to the data root when inside it."""
        if self.data_root is not None:
            try:
                rel = Path(folder).resolve().relative_to(self.data_root)
            except ValueError:
                return str(folder)
            return rel.as_posix() or "."
        return str(folder)

    def _output_path(self, text):
        """The export folder typed in the page: inside the output root (when there is one)."""
        from specwidgets.app.security import inside_root

        text = str(text).strip()
        if not text:
            raise ValueError("type the folder to export to")
        if self.output_root is None:
            return _user_path(text)
        return inside_root(text, self.output_root, "output")

    def export(self, out_dir=None, overwrite=None):
        """Export the current result into ``out_dir`` (default: the page's Export field) under the output root.

        Existing files are replaced only with ``overwrite`` (default: the
        page's Overwrite box); otherwise nothing is written and the message
        names them. Returns the paths written.
        """
        from specwidgets.io.fits_output import output_name

        dash = self.dashboard
        if dash is None:
            raise ValueError("nothing to export: no data loaded")
        typed = dash.export_folder.value if out_dir is None else str(out_dir)
        overwrite = self.export_overwrite.value if overwrite is None else bool(overwrite)
        try:
            folder = self._output_path(typed)
            if not overwrite:
                existing = [name for name in map(output_name, dash.exposure_names) if (folder / name).exists()]
                if existing:
                    shown = ", ".join(existing[:6]) + (", ..." if len(existing) > 6 else "")
                    raise FileExistsError(
                        f"{len(existing)} file(s) already exist in {typed.strip()!r} ({shown}): tick Overwrite "
                        "to replace them, or choose another folder"
                    )
            written = dash.export(folder, overwrite=overwrite)
        except (OSError, ValueError) as exc:
            # Beside the button too: the status banner is at the top of the page.
            dash.export_message.value = f"<span style='color:#8a1c1c'>&#9888; {html.escape(str(exc))}</span>"
            raise
        where = self._shown_output(folder)
        dash.export_message.value = html.escape(f"wrote {len(written)} file(s) to {where}")
        return written

    def _shown_output(self, folder):
        from specwidgets.app.voila_server import TOKEN_ENV

        if self.output_root is not None and os.environ.get(TOKEN_ENV):
            # A shared page (it has a token) does not reveal the server's paths.
            rel = Path(folder).relative_to(self.output_root).as_posix()
            return f"{rel or '.'} (under the output root)"
        # On one's own machine: the absolute path, to find the files.
        return str(Path(folder).resolve())

    def _wire_export(self, dash):
        """Route the dashboard's Export button through :meth:`export` (roots, no silent overwrite)."""
        dash.export_button._click_handlers.callbacks.clear()
        dash.export_button.on_click(dash.status.guard(lambda _: self.export()))
        for child in dash.children:
            if dash.export_button in getattr(child, "children", ()):
                child.children = [*child.children[:-1], self.export_overwrite, child.children[-1]]
                break

    # ------------------------------------------------------------- messages
    def _say(self, kind, text, details=()):
        body = html.escape(text).replace("\n", "<br>")
        if details:
            body += "<ul style='margin:2px 0'>" + "".join(f"<li>{html.escape(d)}</li>" for d in details) + "</ul>"
        self.message.value = (
            f"<div class='sw-{kind}' style='{_MESSAGE_STYLES[kind]};padding:4px 8px;border-radius:3px'>{body}</div>"
        )
        self.message.layout.display = None

    def _clear_message(self):
        self.message.value = ""
        self.message.layout.display = "none"

    def _show_progress(self, done, total, name):
        self.progress.max = max(total, 1)
        self.progress.value = done
        self.progress.layout.visibility = "visible"
        self.progress_label.value = (
            f"<span style='font-size:90%'>reading {done + 1}/{total}: <code>{html.escape(name)}</code></span>"
            if name else f"<span style='font-size:90%'>read {total} file(s); fitting&hellip;</span>"
        )

    # --------------------------------------------------------------- loading
    def load(self):
        """Load the chosen source; True on success. Failures are shown, never raised."""
        self.load_button.disabled = True
        self._clear_message()
        start = time.perf_counter()
        try:
            if self.source.value == "demo":
                self.load_demo()
            elif self.source.value == "goodman":
                self._load_goodman()
            else:
                self._load_form()
        except Exception as exc:  # noqa: BLE001 - shown in the page instead of a traceback
            if _looks_raw(str(exc)):
                import logging

                logging.getLogger("specwidgets").exception("loading failed")
            self.last_error = self._relative_to_root(_describe(exc))
            if isinstance(exc, _FieldError):
                # The frames may be fine: the typed rows are what to change.
                self._say("error", f"Not loaded: the {exc.field} field: {self.last_error}")
            else:
                self._say("error", f"Could not load the data: {self.last_error}")
            return False
        finally:
            self.load_button.disabled = False
            self.progress.layout.visibility = "hidden"
            self.progress_label.value = ""
        if self.message.layout.display == "none":
            self._say("info", f"Loaded {self.data_label} in {time.perf_counter() - start:.1f} s.")
        kept = self._kept_text()
        if kept:
            self.message.value += f"<div style='font-size:90%;margin-top:2px'>{html.escape(kept)}</div>"
        return True

    def _kept_text(self):
        """Which of the user's sky settings the load kept, when any differs from the default."""
        from specwidgets.interactive.state import SkyState

        defaults = {name: SkyState.class_traits()[name].default_value for name in KEPT_SKY_SETTINGS}
        changed = [f"{name.replace('_', ' ')} {value}" for name, value in self.sky_settings().items()
                   if value != defaults[name]]
        return f"Kept your sky settings: {', '.join(changed)}." if changed else ""

    def load_demo(self):
        """Show the embedded synthetic demo."""
        from specwidgets.io.synthetic import load_demo

        frames = load_demo()
        names = [f"demo_{k}" for k in range(frames.science.shape[0])]
        # The demo frames carry their own read noise and gain (no override).
        self._show(frames.science, frames.arc, [frames.trace_rows], None, "the synthetic demo", names,
                   source={"kind": "demo"})

    def _load_goodman(self):
        from specwidgets.io.sample_data import goodman_path

        self.progress_label.value = "<span style='font-size:90%'>finding the Goodman sample&hellip;</span>"
        folder = goodman_path()
        self.folder.value = self._shown_path(folder)
        self._apply_preset(GOODMAN_PRESET)
        # The packaged sample is the app's own data, allowed outside the data root.
        self._load_form(label="the Goodman sample", folder=folder, kind="goodman")

    def _load_form(self, label=None, folder=None, kind="folder"):
        from specwidgets.app.security import escape_outside_links

        with _field("Crop rows"):
            crop = parse_rows(self.crop.value, "crop rows")
        with _field("Mask rows"):
            mask = RowRanges.parse(self.mask.value, "mask rows")
        if folder is None:  # typed by the user: confined to the data root
            if not self.folder.value.strip():
                raise ValueError("type the folder that holds the FITS files")
            folder = self._data_path(self.folder.value)
            if self.data_root is not None:
                links = escape_outside_links(folder, self.data_root)
                if links:
                    raise ValueError(
                        f"{len(links)} entr(y/ies) in this folder lead outside the data root and cannot be "
                        f"read: {', '.join(links[:6])}"
                    )
        data = load_folder(
            folder, instrument=self.instrument.value, arc_tag=self.arc_tag.value,
            bias_tag=self.bias_tag.value, science_tag=self.science_tag.value, flat_tag=self.flat_tag.value,
            crop_bds=crop, progress=self._show_progress,
        )
        n_rows = data.science.shape[1]
        # One value from the form to the fit: resolved (and refused) here.
        if mask:
            with _field("Mask rows"):
                mask = mask.resolve(n_rows, "mask rows")
        else:
            mask = RowRanges([guess_trace_rows(data.science)]).resolve(n_rows, "mask rows")
        counts = ", ".join(f"{len(v)} {k}" for k, v in data.files.items() if v)
        label = label or f"{self.folder.value.strip()} ({counts} frame(s))"
        source = self._source_record(kind, folder, crop, data.arc_combine)
        # The science frames carry the headers' noise model; the page's fields show it.
        self._show(data.science, data.arc, mask, None, label, data.files.get("science"), source=source,
                   headers=data.headers)
        # What an export's header records of the inputs, as batch's outputs do.
        shared = {
            "instrument": self.instrument.value, "crop": crop, "unit": data.unit, "arc_combine": data.arc_combine,
            "dispersion_axis": data.instrument_options.get("dispersion_axis"),
            **{role: [Path(f).name for f in data.files.get(role, [])] for role in ("bias", "flat", "arc")},
        }
        if data.flat is not None:
            from specwidgets.io.fits_output import bad_flat_mask

            shared["flat_norm"] = data.flat_norm
            # As batch marks them: the pixels the flat could not correct (NaN in the science).
            self.dashboard.export_extra_mask = bad_flat_mask(data.flat)
            self.dashboard.export_flat_noise = data.flat_noise
        gains = data.input_gains or [None] * data.science.shape[0]
        # How each frame was turned to fit (an export is turned back as its input lies, as batch's outputs).
        turns = _turns(self.instrument.value, data, len(gains))
        self.dashboard.export_provenance = [{**shared, "input_gain": gain, "turn": turn}
                                            for gain, turn in zip(gains, turns)]
        notes = list(data.notes)
        if data.unit == "adu":
            notes.append("no gain in the headers: the frames stay in ADU")
        if data.read_noise is None:
            notes.append("no read noise in the headers: the sky fit estimates the noise model from the data")
        if data.bias is None:
            notes.append("no bias frames: nothing was subtracted")
        if data.skipped:
            # Each entry says why: unreadable, or a flat or dark left out of "every other file".
            self._say("warning", f"Loaded {label}, leaving out {len(data.skipped)} file(s):",
                      data.skipped + [f"Note: {note}" for note in notes])
        elif notes:
            self._say("warning", f"Loaded {label}:", notes)

    def _source_record(self, kind, folder, crop, arc_combine):
        """The ``source`` part of a session (see :mod:`specwidgets.io.settings`): what batch needs to read the frames."""
        from specwidgets.io.settings import mask_text

        record = {"kind": kind, "instrument": self.instrument.value, "arc_tag": self.arc_tag.value,
                  "bias_tag": self.bias_tag.value, "science_tag": self.science_tag.value,
                  "flat_tag": self.flat_tag.value,
                  "crop": None if crop is None else mask_text(crop), "arc_combine": arc_combine}
        if kind == "folder":
            folder = Path(folder).resolve()
            # Relative to the data root, so the session names no server path and
            # batch finds the folder wherever the root is (--data-root).
            if self.data_root is not None and folder.is_relative_to(self.data_root):
                record.update(folder=folder.relative_to(self.data_root).as_posix() or ".", root="data root")
            else:
                record.update(folder=str(folder), root=None)
        return record

    def _session_path(self, text):
        """A session file typed in the page: under the output root (when there is one)."""
        text = str(text).strip()
        if not text:
            raise ValueError("type the session file's name, e.g. night1_session.json")
        return self._output_path(text)

    def save_session(self, path=None):
        """Save the dashboard's settings and the data source (see :mod:`specwidgets.io.settings`); returns the path."""
        dash = self.dashboard
        if dash is None:
            raise ValueError("nothing to save: no data loaded")
        typed = dash.session_path.value if path is None else str(path)
        written = dash.save_session(self._session_path(typed))
        dash.session_message.value = html.escape(f"saved the settings to {self._shown_output(written)}")
        return written

    def load_session(self, path=None):
        """Apply a session file's settings to the loaded data; returns what could not be applied.

        A bad file (wrong version, unknown key, invalid mask) raises a
        ValueError naming the key, and the dashboard keeps its settings.
        """
        dash = self.dashboard
        if dash is None:
            raise ValueError("nothing to apply the session to: no data loaded")
        typed = dash.session_path.value if path is None else str(path)
        try:
            return dash.load_session(self._session_path(typed))
        except ValueError as exc:  # shown without the server's paths
            text = self._relative_to_root(str(exc))
            dash.session_message.value = html.escape(f"could not load the session: {text}", quote=False)
            raise ValueError(text) from None

    def _wire_sessions(self, dash):
        """Route the dashboard's session buttons through the app (roots; the source is saved too)."""
        for button, method in ((dash.save_session_button, self.save_session),
                               (dash.load_session_button, self.load_session)):
            button._click_handlers.callbacks.clear()
            button.on_click(dash.status.guard(lambda _, method=method: method()))

    def sky_settings(self):
        """The shown dashboard's sky method and options, which a new Load keeps (empty before any)."""
        if self.dashboard is None:
            return {}
        state = self.dashboard.state
        return {name: getattr(state, name) for name in KEPT_SKY_SETTINGS}

    def _show(self, science, arc, mask_region, read_noise, label, names=None, source=None, headers=None):
        from specwidgets.interactive import Dashboard

        if names is not None and len(names) != science.shape[0]:
            names = None  # exported files then take generic names
        if headers is not None and len(headers) != science.shape[0]:
            headers = None
        # The sky method and options the user chose stay for the next frames;
        # what belongs to the frames (mask, warp, noise) comes with them.
        kept = self.sky_settings()
        dash = Dashboard(science, arc, mask_region=mask_region, read_noise=read_noise, figsize=self.figsize,
                         exposure_names=names, input_headers=headers, **kept)
        for part, name in ((dash.viewer, "sw-image-viewer"), (dash.sed, "sw-sed-explorer"),
                           (dash.picker, "sw-warp-picker"), (dash.status, "sw-status")):
            if part is not None:
                part.add_class(name)
        dash.viewer.mask_slider.add_class("sw-mask-slider")
        dash.add_class("sw-dashboard")
        self._wire_export(dash)
        dash.session_source = source
        self._wire_sessions(dash)
        if (source or {}).get("kind") in ("folder", "goodman"):
            # The form's Mask rows follow the dashboard's mask (a guessed one, a
            # slider drag, a session): the next Load keeps it instead of resetting it.
            def follow(change=None, state=dash.state):
                self.mask.value = RowRanges.coerce(state.mask_region).text

            dash.state.observe(follow, names="mask_region")
            follow()
        old, self.dashboard, self.data_label = self.dashboard, dash, label
        self.body.children = [dash]
        if old is not None:
            # The page's own Overwrite box sits in the old dashboard's export
            # row too (now in the new one's): closing it with the old tree
            # broke every later load ('NoneType' object has no attribute 'comm_id').
            _close_tree(old, seen={id(self.export_overwrite)})


def _describe(exc):
    """One plain sentence for the page: what went wrong and, where we know it, the fix."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        package = exc.name.split(".")[0]
        return (f"this needs the Python package {package}, which is not installed here; "
                f"install it (pip install {package}) and restart the dashboard")
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        # File-system errors: "Permission denied: /path", not "[Errno 13] ...".
        return f"{exc.strerror}: {exc.filename}"
    text = str(exc) or type(exc).__name__
    if _looks_raw(text):
        # A library's own message (connection pools, reprs): keep it out of the page.
        return (f"{type(exc).__name__} while loading; the details are in the log of the server "
                "that runs the dashboard")
    return text


def _looks_raw(text):
    return any(marker in text for marker in ("ConnectionPool", "object at 0x", "Traceback", "urllib3."))


def show(data_folder=None, **kwargs):
    """Display the dashboard app (DATA_FOLDER from :data:`DATA_ENV` when not given).

    Returns None, so that ``show()`` as a cell's last line displays the app
    once; build a :class:`DashboardApp` to keep a handle on it.
    """
    from IPython.display import display

    app = DashboardApp(data_folder, **kwargs) if data_folder else DashboardApp.from_environment(**kwargs)
    display(app.widget)
