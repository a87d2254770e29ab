"""Sphinx configuration: the biodiffuse documentation site, built offline.

    pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html

Markdown pages through MyST, the tutorial notebooks rendered with their committed outputs
(myst-nb, not executed here: the tests execute them), the API reference generated from the
numpy docstrings (autodoc + autosummary + napoleon). No intersphinx: the build needs no network.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import biodiffuse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

project = "biodiffuse"
author = "the biodiffuse developers"
copyright = "2026, the biodiffuse developers"
release = version = biodiffuse.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}  # .rst first: autosummary writes rst
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # notebooks are rendered with their committed outputs

autosummary_generate = True
autodoc_default_options = {
    "members": True,
    "show-inheritance": False,
    # scikit-learn's generated metadata-routing methods of the baselines (their docstrings
    # point into scikit-learn's own glossary)
    "exclude-members": "set_fit_request,set_predict_request,set_score_request,set_transform_request,"
    "get_metadata_routing,set_output",
}
autodoc_inherit_docstrings = False  # Lightning's hook docstrings are not ours
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes" sections as fields, not a second description of each member

html_theme = "furo"
html_title = "biodiffuse"

# The tutorials live in ../tutorials (executed by the tests): copy them in at build time.
_tut = HERE / "tutorials"
_tut.mkdir(exist_ok=True)
for nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
    shutil.copyfile(nb, _tut / nb.name)
