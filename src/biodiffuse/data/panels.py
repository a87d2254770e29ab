"""Antibody-name harmonisation across CITE-seq / ADT protein panels.

Different data sets name the same antibody target differently (``"CD8a_TotalSeqB"``,
``"CD8"``, ``"CD8_PROT"``; ``"PD-1 (CD279)"``, ``"CD279_PROT"``). This module maps every
name to one *canonical* name so that panels can be matched by name, as the rest of the
package does with channels.

How a name is canonicalised (:func:`canonical_protein_name`)
------------------------------------------------------------
1. Wrappers are removed, repeatedly: vendor / assay suffixes (``_TotalSeqA/B/C/D``,
   ``_PROT``, ``_protein``, ``-ADT``, ``-CITE``, ``_antibody``), prefixes (``ADT_``,
   ``PROT_``, ``CITE_``, ``AB_``, ``anti-human``, ``Hu.``), and clone names, either after a
   separator or in parentheses, when they are in :data:`KNOWN_CLONES` or written as
   ``clone XYZ``.
2. Isotype controls (:func:`is_isotype_control`) become ``"<Species> <Ig subclass> isotype"``,
   e.g. ``"Mouse IgG1 isotype"``; without a species in the name, ``"IgG1 isotype"``. The
   light chain (kappa / lambda) is dropped; isotype-control clones (``MOPC-21``, ``RTK4530``,
   ...) give species and subclass; a control with neither is ``"Isotype control"``. A bare
   subclass is *not* assumed to be mouse, so ECCITE's ``"IgG1"`` and dsb's
   ``"MouseIgG1kappaisotype"`` stay distinct.
3. A *key* is formed: Greek letters and the words alpha / beta / gamma / delta / epsilon /
   kappa / lambda become latin letters, then everything is lower-cased and reduced to
   letters and digits (``"HLA-A,B,C"`` -> ``"hlaabc"``, ``"IL7Ralpha"`` -> ``"il7ra"``).
   The key is looked up in :data:`PROTEIN_ALIASES` (whose keys are reduced the same way).
4. ``"A (B)"`` names not found as a whole are resolved part by part: if both parts are
   known they must agree (else a ``ValueError``: the name is ambiguous), otherwise the
   known part wins (``"MHCII (HLA-DR)"`` -> ``"HLA-DR"``, ``"CD26 (Adenosine)"`` ->
   ``"CD26"``).
5. Anything else: cluster-of-differentiation names become ``CD<n>`` plus their suffix
   (one letter lower case: ``CD1c``, ``CD11b``; several letters upper case: ``CD45RA``);
   other names become their key in upper case (``"klrg1"`` -> ``"KLRG1"``).

Naming convention of the canonical names
----------------------------------------
The CD name where one exists, except for targets that panels and the literature usually
call by another name: checkpoint and co-stimulatory receptors (``PD-1``, ``PD-L1``,
``PD-L2``, ``CTLA-4``, ``LAG-3``, ``TIM-3``, ``TIGIT``, ``OX40``, ``4-1BB``, ``ICOS``,
``GITR``, ``BTLA``), chemokine receptors (``CCR7``, ``CXCR4``, ...), MHC (``HLA-DR``,
``HLA-ABC``) and ``EpCAM``. Isoform-specific CD45 antibodies (``CD45RA``, ``CD45RO``,
``CD45RB``, ``CD45R``/B220) are kept apart from pan-CD45 and from each other, and
``CD8b`` from ``CD8`` (``CD8``, ``CD8a`` and ``CD8alpha`` are the same antibody target).
Anti-immunoglobulin antibodies named by class (``IgA``, ``IgD``, ``IgM``, ``IgG``,
``IgE``) are targets, not isotype controls. ECCITE's ``"TCRb"`` and ``"TCRg"`` are kept as
they are (their exact specificity, alpha/beta or gamma/delta heterodimer, is not stated in
the file), so they are not matched to dsb's ``"TCRgd"``.

Some panels hold two antibodies against one target (ECCITE-seq: ``"PD-1 (CD279)"`` and
``"PD1 (CD279)"``; ``"B7-H1 (PD-L1)"`` and ``"PD-L1 (CD274)"``, with different counts).
Both get the same canonical name; :func:`harmonize_panels` refuses such a panel unless
told what to do (``on_duplicate``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = [
    "PROTEIN_ALIASES",
    "KNOWN_CLONES",
    "canonical_protein_name",
    "is_isotype_control",
    "harmonize_panels",
    "union_panel_matrix",
]

# canonical name: other names of the same antibody target (matched case- and punctuation-
# insensitively). Canonical names map to themselves.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    # T cells
    "CD3": ("CD3e", "CD3epsilon", "CD3E"),
    "CD4": (),
    "CD8": ("CD8a", "CD8alpha", "CD8A"),
    "CD8b": ("CD8beta",),
    "CD25": ("IL2RA", "IL-2Ralpha", "IL2Ralpha"),
    "CD127": ("IL7R", "IL-7Ralpha", "IL7Ralpha", "IL7RA"),
    "TCRgd": ("TCR gamma/delta", "gdTCR", "TCR-gd", "TCRgammadelta"),
    "TCRab": ("TCR alpha/beta", "abTCR", "TCRalphabeta"),
    "TCRb": (),  # ECCITE; specificity not stated, kept apart from TCRab
    "TCRg": (),  # ECCITE; specificity not stated, kept apart from TCRgd
    # CD45 and its isoforms: different antibodies, never merged
    "CD45": ("PTPRC",),
    "CD45RA": (),
    "CD45RO": (),
    "CD45RB": (),
    "CD45R": ("B220", "CD45R/B220"),
    # myeloid / NK / B
    "CD14": (),
    "CD15": ("SSEA-1",),
    "CD16": ("FCGR3A", "FcgRIII"),
    "CD56": ("NCAM", "NCAM1"),
    "CD19": (),
    "CD20": ("MS4A1",),
    "CD11b": ("ITGAM",),
    "CD11c": ("ITGAX",),
    "CD117": ("c-kit", "KIT"),
    "CD26": ("DPP4",),
    "CD31": ("PECAM", "PECAM1", "PECAM-1"),
    "CD62L": ("L-selectin", "SELL"),
    "CD66b": ("CEACAM8",),
    "CD107a": ("LAMP1", "LAMP-1"),
    "CD275": ("ICOS-L", "ICOSL", "B7-H2"),
    "CD314": ("NKG2D", "KLRK1"),
    "Siglec-8": ("Siglec8",),
    "KLRG1": (),
    "CX3CR1": (),
    "AnnexinV": ("Annexin V", "Annexin-V"),
    # MHC
    "HLA-DR": ("HLADR",),
    "HLA-ABC": ("HLA-A,B,C", "HLAABC", "HLA-A/B/C"),
    "HLA-DQ": (),
    "HLA-DP": (),
    "EpCAM": ("CD326",),
    # checkpoint and co-stimulatory receptors
    "PD-1": ("PD1", "CD279", "PDCD1"),
    "PD-L1": ("PDL1", "CD274", "B7-H1", "B7H1"),
    "PD-L2": ("PDL2", "CD273", "B7-DC", "PDCD1LG2"),
    "CTLA-4": ("CTLA4", "CD152"),
    "LAG-3": ("LAG3", "CD223"),
    "TIM-3": ("TIM3", "CD366", "HAVCR2"),
    "TIGIT": ("VSTM3",),
    "OX40": ("CD134", "TNFRSF4"),
    "4-1BB": ("41BB", "CD137", "TNFRSF9"),
    "ICOS": ("CD278",),
    "GITR": ("CD357", "TNFRSF18"),
    "BTLA": ("CD272",),
    # chemokine receptors
    "CCR2": ("CD192",),
    "CCR3": ("CD193",),
    "CCR4": ("CD194",),
    "CCR5": ("CD195",),
    "CCR6": ("CD196",),
    "CCR7": ("CD197",),
    "CXCR1": ("CD181",),
    "CXCR2": ("CD182",),
    "CXCR3": ("CD183",),
    "CXCR4": ("CD184",),
    "CXCR5": ("CD185",),
    "CXCR6": ("CD186",),
    # anti-immunoglobulin targets (not isotype controls)
    "IgA": (),
    "IgD": (),
    "IgE": (),
    "IgG": (),
    "IgM": (),
}

#: Other name (any case / punctuation) -> canonical antibody-target name. Entries added at run time
#: are used from the next call on (two entries whose names differ only in case / punctuation must
#: agree, else a ValueError).
PROTEIN_ALIASES: dict[str, str] = {alias: canon for canon, aliases in _SYNONYMS.items() for alias in (canon, *aliases)}

#: Clone names stripped when they follow the target name (``"CD3_UCHT1"``, ``"CD4 (RPA-T4)"``).
KNOWN_CLONES: tuple[str, ...] = (
    "UCHT1", "SK7", "OKT3", "HIT3a", "RPA-T4", "OKT4", "SK3", "RPA-T8", "SK1", "M5E2", "63D3",
    "3G8", "B73.1", "HIB19", "SJ25C1", "2H7", "HI100", "UCHL1", "HI30", "BC96", "HCD56",
    "5.1H11", "NCAM16.2", "EH12.2H7", "29E.2A3", "L243", "W6/32", "A019D5",
    "G025H7", "HP-3G10", "104D2", "A018E1", "L293", "ICRF44", "HI149", "DREG-56",
    "G043H7", "F38-2E2", "11C3C65", "MIH18",
)
# Isotype-control clones: the clone name alone identifies the control.
_ISOTYPE_CLONES = {"mopc21": ("Mouse", "IgG1"), "mopc173": ("Mouse", "IgG2a"), "mpc11": ("Mouse", "IgG2b"),
                   "rtk4530": ("Rat", "IgG2b"), "rtk2758": ("Rat", "IgG2a"), "rtk2071": ("Rat", "IgG1"),
                   "htk888": ("Armenian hamster", "IgG")}

_GREEK = {"α": "a", "β": "b", "γ": "g", "δ": "d", "ε": "e", "κ": "k", "λ": "l"}
_GREEK_WORDS = re.compile(r"alpha|beta|gamma|delta|epsilon|kappa|lambda", re.IGNORECASE)
_SPECIES = {"mouse": "Mouse", "mse": "Mouse", "ms": "Mouse", "rat": "Rat", "armenianhamster": "Armenian hamster",
            "syrianhamster": "Syrian hamster", "hamster": "Hamster", "rabbit": "Rabbit", "goat": "Goat"}

_SUFFIX = re.compile(
    r"(?:[\s_.\-]*totalseq[\s_\-]?[abcd]|[\s_.\-]+(?:prot|protein|adt|cite|citeseq|antibody))$", re.IGNORECASE
)
_PREFIX = re.compile(r"^(?:adt|prot|cite|ab|anti[\s_\-]?human|hu)[\s_.\-:]+", re.IGNORECASE)


def _clone_body(clone: str) -> str:
    parts = [p for p in re.split(r"[\W_]+", clone) if p]
    return r"[\W_]?".join(re.escape(p) for p in parts)


_CLONE_TAIL = re.compile(
    r"(?:[\s_.|\-]+|\s*\(\s*)(?:clone[\s_.:\-]*)?(?:"
    + "|".join(sorted({_clone_body(c) for c in KNOWN_CLONES}, key=len, reverse=True))
    + r")\s*\)?$",
    re.IGNORECASE,
)
_GENERIC_CLONE_TAIL = re.compile(r"(?:[\s_|\-]+|\s*\(\s*)clone[\s_.:\-]*[\w.\-/]+\s*\)?$", re.IGNORECASE)
_PAREN = re.compile(r"^(?P<a>[^()]+?)\s*\((?P<b>[^()]+)\)$")
_CD = re.compile(r"^cd(\d+)([a-z]*)$")
_IG = re.compile(r"(?P<species>armenianhamster|syrianhamster|hamster|mouse|mse|ms|rat|rabbit|goat)?(?P<ig>ig[gamed](?:\d[a-d]?)?)")
_BARE_SUBCLASS = re.compile(r"^igg[1-4][a-d]?(?:k|l)?$")
_CONTROL_WORDS = re.compile(r"isotype|control|ctrl")
_SPECIES_ANYWHERE = re.compile(r"armenianhamster|syrianhamster|hamster|mouse|rat|rabbit|goat")


def _key(name: str) -> str:
    """Lower-case letters and digits only, Greek letters / words written as latin letters."""
    s = "".join(_GREEK.get(ch, ch) for ch in name)
    s = _GREEK_WORDS.sub(lambda m: m.group(0)[0], s)
    return re.sub(r"[^0-9a-z]", "", s.lower())


def _build_lookup(aliases: Mapping[str, str]) -> dict[str, str]:
    lookup: dict[str, str] = {}
    for alias, canon in aliases.items():
        k = _key(alias)
        if not k:
            raise ValueError(f"PROTEIN_ALIASES entry {alias!r} has no letters or digits.")
        if lookup.get(k, canon) != canon:
            raise ValueError(
                f"PROTEIN_ALIASES maps {alias!r} to {canon!r}, but a name with the same key {k!r} maps to {lookup[k]!r}."
            )
        lookup[k] = canon
    return lookup


_LOOKUP_CACHE: list = [None, {}]


def _alias_lookup() -> dict[str, str]:
    """Key -> canonical name, rebuilt (and checked) whenever PROTEIN_ALIASES has been edited."""
    items = tuple(PROTEIN_ALIASES.items())
    if _LOOKUP_CACHE[0] != items:
        _LOOKUP_CACHE[1] = _build_lookup(PROTEIN_ALIASES)
        _LOOKUP_CACHE[0] = items
    return _LOOKUP_CACHE[1]


_alias_lookup()  # the shipped table must be consistent


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"Protein names must be str, got {type(name).__name__} ({name!r}).")
    if not name.strip():
        raise ValueError("Protein name is empty.")
    return name.strip()


def _strip_wrappers(name: str) -> str:
    """Remove assay suffixes / prefixes and clone names until nothing changes."""
    prev = None
    s = name.strip()
    while s != prev:
        prev = s
        for pattern in (_SUFFIX, _PREFIX, _CLONE_TAIL, _GENERIC_CLONE_TAIL):
            t = pattern.sub("", s).strip()
            if t and _key(t):  # never strip a name down to nothing
                s = t
    return s


def _isotype_parts(key: str) -> tuple[str | None, str | None, str] | None:
    """(species, Ig subclass, rest of the key) if ``key`` names an isotype control, else None."""
    for clone, (species, ig) in _ISOTYPE_CLONES.items():
        if clone in key:
            return species, ig, ""
    control_word = bool(_CONTROL_WORDS.search(key))
    core = _CONTROL_WORDS.sub("", key)
    m = _IG.search(core)
    ig = "Ig" + m.group("ig")[2].upper() + m.group("ig")[3:] if m else None
    species_key = m.group("species") if m and m.group("species") else None
    if species_key is None:
        found = _SPECIES_ANYWHERE.search(core)
        species_key = found.group(0) if found else None
    species = _SPECIES[species_key] if species_key else None
    rest = "" if m else core
    if "isotype" in key or (control_word and m):
        return species, ig, rest
    if m and m.group("species") and m.start() == 0 and re.fullmatch(r"[kl]?", core[m.end():]):
        return species, ig, rest  # "MouseIgG1", "RatIgG2bk": host species + Ig is a control in a human panel
    if _BARE_SUBCLASS.match(core):
        return None, ig, rest  # "IgG1", "IgG2a": subclass names are isotype controls (targets: IgG, IgA, ...)
    return None


def is_isotype_control(name: str) -> bool:
    """Whether ``name`` is an isotype-control antibody rather than a target.

    True for names containing "isotype" (``"MouseIgG1kappaisotype_PROT"``,
    ``"Mouse IgG2bkIsotype_PROT"``), a host species followed by an immunoglobulin
    (``"Rat IgG2b"``, ``"Armenian Hamster IgG"``), a bare IgG subclass (``"IgG1"``,
    ``"IgG2a"``, as ECCITE-seq names its controls), a control word with an immunoglobulin
    (``"IgG1_ctrl"``) or an isotype-control clone (``"MOPC-21"``). False for antibodies
    against human immunoglobulin classes (``"IgA"``, ``"IgD"``, ``"IgM"``, ``"IgG"``).

    Parameters
    ----------
    name
        Antibody name as found in a data set.

    Returns
    -------
    bool

    Examples
    --------
    >>> bd.data.is_isotype_control("MouseIgG1kappaisotype_PROT"), bd.data.is_isotype_control("IgG1")
    (True, True)
    >>> bd.data.is_isotype_control("IgM"), bd.data.is_isotype_control("CD3_PROT")
    (False, False)
    """
    key = _key(_strip_wrappers(_check_name(name)))
    return _isotype_parts(key) is not None


def _lookup(part: str) -> str | None:
    """Canonical name of one name part from the alias table or the CD pattern, else None."""
    k = _key(_strip_wrappers(part))
    lookup = _alias_lookup()
    if k in lookup:
        return lookup[k]
    m = _CD.match(k)
    if m:
        num, suffix = m.groups()
        return f"CD{num}" + (suffix if len(suffix) <= 1 else suffix.upper())
    return None


def canonical_protein_name(name: str) -> str:
    """Canonical antibody-target name of ``name`` (see the module docstring for the rules).

    Parameters
    ----------
    name
        Antibody name as found in a data set, e.g. ``"CD8a_TotalSeqB"``, ``"PD-1 (CD279)"``,
        ``"CD279_PROT"``, ``"MouseIgG1kappaisotype_PROT"``.

    Returns
    -------
    str
        E.g. ``"CD8"``, ``"PD-1"``, ``"PD-1"``, ``"Mouse IgG1 isotype"``. Canonical names map
        to themselves.

    Raises
    ------
    TypeError
        If ``name`` is not a string.
    ValueError
        If ``name`` is empty, or is of the form ``"A (B)"`` with ``A`` and ``B`` two
        different known targets.

    Examples
    --------
    >>> canonical_protein_name("CD8a_TotalSeqB"), canonical_protein_name("CD8_PROT")
    ('CD8', 'CD8')
    >>> canonical_protein_name("MHCII (HLA-DR)"), canonical_protein_name("HLA-DR_PROT")
    ('HLA-DR', 'HLA-DR')
    """
    raw = _check_name(name)
    cleaned = _strip_wrappers(raw)
    key = _key(cleaned)
    if not key:
        raise ValueError(f"Protein name {name!r} has no letters or digits.")
    iso = _isotype_parts(key)
    if iso is not None:
        species, ig, rest = iso
        label = " ".join(x for x in (species, ig) if x)
        if label:
            return f"{label} isotype"
        return f"Isotype control {rest.upper()}" if rest else "Isotype control"
    lookup = _alias_lookup()
    if key in lookup:
        return lookup[key]
    m = _PAREN.match(cleaned)
    if m:
        a, b = _lookup(m.group("a")), _lookup(m.group("b"))
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"Protein name {name!r} is ambiguous: {m.group('a')!r} means {a!r} but {m.group('b')!r} means {b!r}. "
                "Rename the column, or add the name to PROTEIN_ALIASES."
            )
        if a is not None or b is not None:
            return a if a is not None else b  # type: ignore[return-value]
    found = _lookup(cleaned)
    return found if found is not None else key.upper()


_ON_DUPLICATE = ("raise", "first", "mean")


def _check_frames(frames: Mapping[str, pd.DataFrame]) -> None:
    if not isinstance(frames, Mapping) or not frames:
        raise ValueError("frames must be a non-empty dict of panel name -> DataFrame (cells x proteins).")
    for panel, df in frames.items():
        if not isinstance(panel, str) or not panel:
            raise TypeError(f"Panel names must be non-empty str, got {panel!r}.")
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"frames[{panel!r}] must be a pandas DataFrame, got {type(df).__name__}.")
        if df.shape[1] == 0:
            raise ValueError(f"frames[{panel!r}] has no columns.")
        if df.columns.has_duplicates:
            dup = df.columns[df.columns.duplicated()].unique().tolist()
            raise ValueError(f"frames[{panel!r}] has duplicated column names {dup}.")


def harmonize_panels(
    frames: Mapping[str, pd.DataFrame],
    on_duplicate: str = "raise",
    drop_isotypes: bool = False,
) -> dict:
    """Rename the columns of several protein panels to canonical antibody-target names.

    Parameters
    ----------
    frames
        Panel name -> DataFrame (cells x proteins, columns = antibody names as in the data
        set). Not modified.
    on_duplicate
        What to do when two columns of one panel get the same canonical name (two
        antibodies against one target): ``"raise"`` (default) a ``ValueError`` naming them;
        ``"first"``: keep the first such column; ``"mean"``: replace them by their mean
        (numeric columns only), at the first one's position.
    drop_isotypes
        Leave isotype-control columns (:func:`is_isotype_control`) out of the output.

    Returns
    -------
    dict
        ``"frames"``: panel -> renamed copy (same index, canonical columns, in the original
        order); ``"mapping"``: panel -> {original name: canonical name}, all columns;
        ``"union"``: canonical names measured by any panel (list, first-seen order, panels
        in ``frames`` order); ``"intersection"``: names measured by every panel (list, in
        union order); ``"overlap"``: DataFrame panel x panel of the number of shared
        canonical names (diagonal: panel sizes); ``"duplicates"``: panel -> {canonical
        name: [original names]} where several columns shared a name; ``"isotype_controls"``:
        panel -> list of canonical isotype-control names.

    Raises
    ------
    ValueError
        On an empty input, duplicated column names, an unknown ``on_duplicate``, or (with
        ``"raise"``) two columns of one panel with the same canonical name.
    TypeError
        If a panel is not a DataFrame, or a column name is not a string.

    Examples
    --------
    >>> a = pd.DataFrame(np.ones((2, 3)), columns=["CD3_TotalSeqB", "CD8a_TotalSeqB", "IgG1"])
    >>> b = pd.DataFrame(np.ones((3, 2)), columns=["CD3", "CD8 (Ly-2)"])
    >>> out = bd.data.harmonize_panels({"pbmc10k": a, "eccite": b}, drop_isotypes=True)
    >>> out["union"], out["mapping"]["pbmc10k"]["CD8a_TotalSeqB"]
    (['CD3', 'CD8'], 'CD8')
    """
    if on_duplicate not in _ON_DUPLICATE:
        raise ValueError(f"on_duplicate must be one of {list(_ON_DUPLICATE)}, got {on_duplicate!r}.")
    _check_frames(frames)
    out_frames: dict[str, pd.DataFrame] = {}
    mapping: dict[str, dict[str, str]] = {}
    duplicates: dict[str, dict[str, list[str]]] = {}
    isotypes: dict[str, list[str]] = {}
    for panel, df in frames.items():
        names: dict[str, str] = {}
        for col in df.columns:
            if not isinstance(col, str):
                raise TypeError(f"frames[{panel!r}] column {col!r} is not a string; protein names must be str.")
            names[col] = canonical_protein_name(col)
        groups: dict[str, list[str]] = {}
        for col, canon in names.items():
            groups.setdefault(canon, []).append(col)
        dups = {canon: cols for canon, cols in groups.items() if len(cols) > 1}
        if dups and on_duplicate == "raise":
            detail = "; ".join(f"{cols} -> {canon!r}" for canon, cols in dups.items())
            raise ValueError(
                f"Panel {panel!r} has several columns for one antibody target: {detail}. Drop all but one "
                "(e.g. df.drop(columns=[...])), or pass on_duplicate='first' or 'mean'."
            )
        iso = [canon for canon, cols in groups.items() if is_isotype_control(cols[0])]
        columns = {}
        for canon, cols in groups.items():
            if drop_isotypes and canon in iso:
                continue
            if len(cols) > 1 and on_duplicate == "mean":
                block = df[cols]
                if not all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
                    raise ValueError(f"on_duplicate='mean' needs numeric columns; panel {panel!r} {cols} are not.")
                columns[canon] = block.mean(axis=1)
            else:
                columns[canon] = df[cols[0]].copy()
        renamed = pd.DataFrame(columns, index=df.index.copy())
        out_frames[panel] = renamed
        mapping[panel] = names
        duplicates[panel] = dups
        isotypes[panel] = iso
    union: list[str] = []
    seen: set[str] = set()
    for df in out_frames.values():
        for c in df.columns:
            if c not in seen:
                seen.add(c)
                union.append(c)
    sets = {p: set(df.columns) for p, df in out_frames.items()}
    common = set.intersection(*sets.values())
    intersection = [c for c in union if c in common]
    panels = list(out_frames)
    overlap = pd.DataFrame(
        [[len(sets[a] & sets[b]) for b in panels] for a in panels], index=panels, columns=panels, dtype=int
    )
    return {
        "frames": out_frames,
        "mapping": mapping,
        "union": union,
        "intersection": intersection,
        "overlap": overlap,
        "duplicates": duplicates,
        "isotype_controls": isotypes,
    }


def union_panel_matrix(
    frames: Mapping[str, pd.DataFrame],
    on_duplicate: str = "raise",
    drop_isotypes: bool = False,
) -> tuple[pd.DataFrame, pd.Series]:
    """Stack several panels into one cells x (union of canonical proteins) table.

    Parameters
    ----------
    frames
        Panel name -> DataFrame of numeric, finite values (cells x proteins). Not modified.
    on_duplicate, drop_isotypes
        As in :func:`harmonize_panels`.

    Returns
    -------
    values
        DataFrame (float64), rows = the cells of all panels in ``frames`` order, index
        ``"<panel>:<original index>"``, columns = the union of canonical names (order as in
        :func:`harmonize_panels`); NaN exactly where a panel did not measure a protein.
    source
        Series (categorical, categories = panel names in order) giving each row's panel,
        same index as ``values``.

    Raises
    ------
    ValueError
        As :func:`harmonize_panels`, and on non-numeric, NaN or inf values (a NaN in the
        output must only mean "not measured").

    Examples
    --------
    >>> panels = {"pbmc10k": pbmc.obsm["protein_expression"], "eccite": eccite.obsm["protein_expression"]}
    >>> values, source = bd.data.union_panel_matrix(panels, drop_isotypes=True)
    >>> values.shape, source.value_counts()            # cells x union of proteins, NaN = not measured
    """
    h = harmonize_panels(frames, on_duplicate=on_duplicate, drop_isotypes=drop_isotypes)
    union = h["union"]
    position = {c: i for i, c in enumerate(union)}
    blocks, sources = [], []
    for panel, df in h["frames"].items():
        if df.shape[0] == 0:
            raise ValueError(f"frames[{panel!r}] has no rows.")
        bad = [c for c, t in df.dtypes.items() if not pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t)]
        if bad:
            raise ValueError(f"frames[{panel!r}] has non-numeric columns {bad[:5]}.")
        arr = df.to_numpy(dtype=np.float64)
        if not np.isfinite(arr).all():
            n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
            raise ValueError(
                f"frames[{panel!r}] contains {n_nan} NaN and {n_inf} inf value(s); values must be finite "
                "(NaN in the union matrix marks unmeasured proteins)."
            )
        out = np.full((arr.shape[0], len(union)), np.nan)
        out[:, [position[c] for c in df.columns]] = arr
        index = pd.Index([f"{panel}:{i}" for i in df.index])
        blocks.append(pd.DataFrame(out, index=index, columns=union))
        sources.append(pd.Series(panel, index=index))
    values = pd.concat(blocks, axis=0)
    if values.index.has_duplicates:
        dup = values.index[values.index.duplicated()].unique().tolist()[:5]
        raise ValueError(f"Row labels repeat within a panel (e.g. {dup}); make each panel's index unique.")
    source = pd.concat(sources, axis=0).astype(pd.CategoricalDtype(list(h["frames"]), ordered=False))
    source.name = "panel"
    return values, source
