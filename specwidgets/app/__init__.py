"""The dashboard page (Voila) and its launcher.

* :mod:`.page` - the page: folder form, the dashboard, messages (``show()``)
* :mod:`.launcher` - ``specwidgets dashboard``: checks, warm-up, serving
* :mod:`.voila_server`, :mod:`.security` - the hardened Voila server
"""

from .page import DATA_ENV, NOTEBOOK, DashboardApp, FolderData, load_folder, show

__all__ = ["DATA_ENV", "NOTEBOOK", "DashboardApp", "FolderData", "load_folder", "show"]
