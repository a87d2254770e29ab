"""Build ``tutorials/citeseq.ipynb`` (the CITE-seq protein-imputation tutorial) with nbformat.

Usage::

    python tutorials/_build_citeseq.py            # write the notebook without outputs
    python tutorials/_build_citeseq.py --execute  # also run it (nbclient, CPU) and save the outputs

The executed notebook is what is committed, so that it renders with figures on GitHub.
"""

from __future__ import annotations

from pathlib import Path

from nbformat.v4 import new_code_cell, new_markdown_cell

from _notebook import main

OUT = Path(__file__).resolve().parent / "citeseq.ipynb"

# Training and sampler settings used throughout the notebook (kept small so that it runs in CPU minutes).
EPOCHS = 25
STEPS_TRAINED = "600"  # EPOCHS x 24 batches of 256 cells
N_SAMPLES = 8
STEPS = 5

md = new_markdown_cell
code = new_code_cell

CELLS = [
    md(
        """# Imputing surface proteins from RNA with MCD (CITE-seq)

CITE-seq and Abseq measure RNA and a panel of surface proteins (oligo-tagged antibodies) in the same cells.
Most single-cell data sets have RNA only. This tutorial trains **MCD** (multi-channel diffusion) on
cells that have both, then uses it to impute the proteins of cells that have RNA only. For each cell
MCD gives a posterior mean (the imputation) and a posterior variance (its uncertainty).

Steps:

1. load a bone-marrow Abseq data set and hold out one donor,
2. set up and train MCD,
3. impute the proteins of the held-out, RNA-only cells,
4. compare with ridge and kNN regression baselines (per-protein Pearson r),
5. plot imputed vs measured values for a few proteins,
6. show an imputed protein on a UMAP,
7. save and load the model.

> **The data and the split.** 7,514 real bone-marrow cells from five donors (Triana et al. 2021,
> 422 targeted mRNAs and 97 surface proteins per cell). We train on four donors and hold out the
> fifth (`Aged2`, 713 cells): held-out cells come from a person the model never saw, as they would
> in practice. Training is kept to a few CPU minutes, far below the defaults, so the accuracy
> numbers show how to use the API and how to compare; they are not the model's best."""
    ),
    code(
        """import logging
import tempfile
import time
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

import biodiffuse as bd

set_matplotlib_formats("png", dpi=72)  # render figures as small PNGs in the notebook
sc.settings.verbosity = 0
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no Lightning start-up banners
warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # a Lightning-internal deprecation notice
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
# The model here is small: on a laptop or a shared CPU, one thread is much faster than several
# threads competing for the cores. Drop this line on a GPU or a large machine.
torch.set_num_threads(1)
print("biodiffuse", bd.__version__)"""
    ),
    md(
        """## 1. Load the data and split by donor

`bd.datasets.triana_bm_abseq()` reads the Abseq bone-marrow data (from `../shared/data/citeseq/`,
or the folder in `BIODIFFUSE_DATA_DIR`). Raw mRNA counts are in `X` (sparse). The 97 antibody
counts are in `obsm["protein_expression"]`, a DataFrame with the protein names as columns.
`obs` holds the donor and the authors' cell-type annotation."""
    ),
    code(
        """adata = bd.datasets.triana_bm_abseq()
adata"""
    ),
    code(
        """pd.crosstab(adata.obs["cell_type_broad"], adata.obs["donor"])"""
    ),
    md(
        """We hold out every cell of donor `Aged2`. The model never sees their proteins; we only use
them at the end to check the imputation. Splitting by donor, not by cell, is what tells you how
the model does on a new sample."""
    ),
    code(
        """is_test = (adata.obs["donor"] == "Aged2").to_numpy()
train = adata[~is_test].copy()
test = adata[is_test].copy()
print(f"train: {train.n_obs} cells (donors {sorted(train.obs['donor'].unique())}), test: {test.n_obs} cells")"""
    ),
    md(
        """## 2. Set up and train MCD

`setup_anndata` registers where the data are. With `protein_obsm_key`, MCD runs in
*gene → protein* mode: the proteins are the channels it generates, and the log-normalised RNA is
the condition. The panel is targeted (422 genes), so `n_genes=None` uses all of them (on a whole
transcriptome, `n_genes=1000` keeps the 1,000 most highly variable genes of the training cells).
The proteins are normalised per channel (Yeo-Johnson, then 1st/99th percentile scaling) with
statistics fitted on the training cells.

`train` holds out 10 % of the training cells for validation and early stopping. We train for
{EPOCHS} epochs only (about {STEPS_TRAINED} optimiser steps), a few minutes on a CPU; the default is about
1,500 steps, and a GPU is used when there is one."""
    ),
    code(
        """bd.models.MCD.setup_anndata(train, protein_obsm_key="protein_expression")
torch.manual_seed(0)  # the network's initial weights come from torch's global random state
model = bd.models.MCD(train, n_genes=None)
model"""
    ),
    code(
        """t0 = time.time()
model.train(max_epochs={EPOCHS})
print(f"trained {len(model.history)} epochs in {time.time() - t0:.0f} s")"""
    ),
    md(
        """The training curve shows the EDM (denoising) loss per epoch on the training and validation cells.
Training stops early when the validation loss stops improving."""
    ),
    code(
        """fig = bd.pl.training_curve(model.history)
display(fig)
plt.close(fig)"""
    ),
    md(
        """## 3. Impute the proteins of RNA-only cells

To mimic an RNA-only data set we remove the protein table from a copy of the test cells. `impute`
draws `n_samples` posterior samples per cell with the model's ODE sampler (`steps` DPM-Solver++ 2M
steps from noise level 10, one network evaluation each; few here, to keep it fast), centres each
cell's draws on the mean of its one-step draws (the denoiser's estimate of the conditional mean,
kept from the first evaluation of every draw at no extra cost; `recentre=False` turns it off), and
writes two DataFrames to `obsm`: `MCD_imputed` (posterior mean) and `MCD_variance` (posterior
variance), both on the scale of the raw ADT counts."""
    ),
    code(
        """query = test.copy()
del query.obsm["protein_expression"]  # RNA only
model.impute(query, n_samples={N_SAMPLES}, steps={STEPS})
query"""
    ),
    code(
        """query.obsm["MCD_imputed"].iloc[:5, :8].round(1)"""
    ),
    md(
        """`posterior` returns the same numbers as arrays, together with the mean and variance in the
model's normalised scale (about 0 to 1 per protein). We use the normalised mean to compute
correlations below. Pearson r is sensitive to the heavy tails of raw counts; the normalised scale
does not have them."""
    ),
    code(
        """post = model.posterior(query, n_samples={N_SAMPLES}, steps={STEPS})
{k: v.shape for k, v in post.items()}"""
    ),
    md(
        """## 4. Compare with baselines

Two baselines on PCA features of the log-normalised RNA (50 components, fitted on the training
cells): **ridge** regression (its penalty chosen by cross-validation on the training cells) and
**kNN** regression (the mean protein profile of the nearest training cells). Kernel ridge
regression (`"krr"`, a strong baseline of the NeurIPS 2021 multimodal competition) is also
available in `bd.baselines.fit_predict`; on 6,800 training cells its cross-validation takes
several CPU minutes, so it is left out here.

To put all methods on the same scale, we use the model's own protein normaliser (fitted on the
training cells). The baselines are fitted to the normalised training proteins. All predictions
are then compared with the normalised measured proteins of the held-out donor. The metric is
Pearson r per protein across the held-out cells (**r_p**), averaged over proteins."""
    ),
    code(
        """proteins = model.target_names
norm = bd.data.ChannelNormalizer.from_dict(model.registry["normalizer"])
y_train = norm.transform(train.obsm["protein_expression"][proteins].to_numpy(float))
y_test = norm.transform(test.obsm["protein_expression"][proteins].to_numpy(float))

F_train, F_test, _ = bd.baselines.gene_features(train, query, n_top_genes=train.n_vars, n_pcs=50)
# one sampler step: the denoiser's estimate of E[proteins | RNA], one network evaluation per cell
post1 = model.posterior(query, n_samples=1, steps=1)
r = pd.DataFrame(
    {
        "MCD (1 step)": bd.metrics.pearson_per_channel(y_test, post1["mean_normalized"]),
        "MCD ({N_SAMPLES} draws)": bd.metrics.pearson_per_channel(y_test, post["mean_normalized"]),
        "ridge": bd.metrics.pearson_per_channel(y_test, bd.baselines.fit_predict("ridge", F_train, y_train, F_test)),
        "kNN": bd.metrics.pearson_per_channel(y_test, bd.baselines.fit_predict("knn", F_train, y_train, F_test)),
    },
    index=proteins,
)
mean_r = r.mean()
print(
    f"r_p MCD = {mean_r['MCD (1 step)']:.3f}, ridge = {mean_r['ridge']:.3f}, kNN = {mean_r['kNN']:.3f} "
    f"(MCD, mean of {N_SAMPLES} draws: {mean_r['MCD ({N_SAMPLES} draws)']:.3f})"
)"""
    ),
    md(
        """The bar plot shows r per protein for the 30 proteins MCD predicts best. Proteins whose RNA
carries the signal, such as lineage markers, can be predicted; proteins that barely vary among
these cells, or whose antibody mostly measures background, cannot be predicted well by any method.

How to read these numbers:

* They come from one held-out donor (713 cells). Donors differ, so a leave-one-donor-out loop
  over all five (as in `benchmarks/`) gives the spread; a difference of a few hundredths is
  within it. Nothing was tuned on the test cells.
* MCD was trained very briefly here ({EPOCHS} epochs) and sampled with {N_SAMPLES} draws of {STEPS}
  sampler steps, below the defaults (about 1,500 optimiser steps, 18 sampler steps). In this
  short run kNN comes out ahead, and ridge ahead of a single one-step draw: this is a usage
  example, not a fair comparison.
* One sampler step (`steps=1`) returns the denoiser's estimate of the conditional mean
  E[proteins | RNA]. It is usually the better point estimate: the mean of a few plain posterior
  draws still carries their spread. That is why the multi-step draws are recentred on it by
  default: their mean is the mean of the {N_SAMPLES} one-step draws (less noisy than one such
  draw), their spread that of the {STEPS}-step draws."""
    ),
    code(
        """top = r.sort_values("MCD (1 step)").tail(30)[["MCD (1 step)", "ridge", "kNN"]]
fig = bd.pl.protein_correlation_bars(top, title="Held-out donor Aged2 (713 cells), 30 best proteins")
display(fig)
plt.close(fig)"""
    ),
    md(
        """## 5. Imputed vs measured values

For a few well-known markers we plot the imputed values (posterior mean) against the measured ADT
counts of the held-out cells, both log1p-transformed. `imputed_vs_measured` needs both tables on one
object, so we copy the test cells and add the imputation.

The posterior mean is computed on the count scale. ADT counts are strongly right-skewed, so when the
posterior is wide, as it is after this short training, its mean lies above most measured values.
The correlations in section 4 use the normalised scale, where this skew is removed."""
    ),
    code(
        """q2 = test.copy()
q2.obsm["MCD_imputed"] = query.obsm["MCD_imputed"]
channels = ["CD3", "CD4", "CD8", "CD14"]
fig = bd.pl.imputed_vs_measured(q2, channels, measured_key="protein_expression", imputed_key="MCD_imputed")
display(fig)
plt.close(fig)"""
    ),
    md(
        """The posterior variance tells you how sure the model is about each imputed value. Here is the
average posterior standard deviation of these markers, with the spread of their imputed values
across cells for comparison. A posterior sd larger than the spread across cells means the model
is unsure about these values, as expected after a few CPU minutes of training."""
    ),
    code(
        """pd.DataFrame(
    {
        "mean posterior sd": np.sqrt(query.obsm["MCD_variance"][channels]).mean(),
        "sd across cells (imputed)": query.obsm["MCD_imputed"][channels].std(),
    }
).round(1)"""
    ),
    md(
        """## 6. An imputed protein on a UMAP

We embed all cells from their RNA (standard scanpy steps on a concatenated copy of the
training and RNA-only query cells). Then we colour the held-out donor's cells by their imputed CD4;
training cells are grey. For comparison, the third panel shows the measured CD4 of the same
held-out cells. The colour scales stop at the 99th percentile."""
    ),
    code(
        """emb = ad.concat([train, query], label="split", keys=["train", "test"])  # keeps X (RNA) and obs only
sc.pp.normalize_total(emb, target_sum=1e4)
sc.pp.log1p(emb)
sc.pp.pca(emb, n_comps=30, random_state=0)
sc.pp.neighbors(emb, n_neighbors=15, random_state=0)
sc.tl.umap(emb, random_state=0)

emb.obs["CD4 (imputed)"] = query.obsm["MCD_imputed"]["CD4"].reindex(emb.obs_names)
emb.obs["CD4 (measured)"] = test.obsm["protein_expression"]["CD4"].reindex(emb.obs_names)
emb.obs["CD14 (imputed)"] = query.obsm["MCD_imputed"]["CD14"].reindex(emb.obs_names)
axes = sc.pl.umap(
    emb,
    color=["split", "CD4 (imputed)", "CD4 (measured)", "CD14 (imputed)"],
    vmax="p99",
    ncols=2,
    size=8,
    show=False,
)
fig = axes[0].figure
display(fig)
plt.close(fig)"""
    ),
    md(
        """## 7. Save and load the model

`save` writes the weights (`model.pt`, a plain tensor state dict) and a JSON file with the settings,
the gene list, the fitted normaliser and the training history. `load` rebuilds the model from these
files and runs no code from them. With the same seed, the loaded model gives the same imputation,
up to float rounding (we compare the posterior means in the normalised scale)."""
    ),
    code(
        """with tempfile.TemporaryDirectory() as tmp:
    model.save(f"{tmp}/mcd_citeseq")
    loaded = bd.models.MCD.load(f"{tmp}/mcd_citeseq")
print(loaded)

query2 = test.copy()
del query2.obsm["protein_expression"]
loaded.impute(query2, n_samples={N_SAMPLES}, steps={STEPS}, seed=0)
post2 = loaded.posterior(query2, n_samples={N_SAMPLES}, steps={STEPS}, seed=0)

diff = np.abs(post2["mean_normalized"] - post["mean_normalized"]).max()
print(f"max |difference| of the imputed means after save / load (normalised scale): {diff:.1g}")
assert diff < 1e-4"""
    ),
    md(
        """## Next steps

* Train on more cells at the default length (about 1,500 optimiser steps: on a held-out Abseq donor
  longer training scored worse, `docs/benchmarks.md`), and
  use more sampler steps (`steps=18`, the default) for the final imputation.
* Repeat the comparison over several splits or data sets before drawing conclusions;
  `python benchmarks/citeseq.py` runs the gene → protein comparison with cross-validation.
* In the *channels* mode (`setup_anndata` without `protein_obsm_key`), MCD imputes any subset of
  channels from any other subset, e.g. missing proteins of a panel from the measured ones."""
    ),
]


if __name__ == "__main__":
    main(CELLS, OUT, __doc__, dict(N_SAMPLES=N_SAMPLES, STEPS=STEPS, EPOCHS=EPOCHS, STEPS_TRAINED=STEPS_TRAINED))
