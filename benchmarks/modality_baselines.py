"""Missing-modality baselines on TCGA: mean, kNN and ridge on encoder latents, cross-validated
over patients (:func:`biodiffuse.baselines.cross_validate_modality`).

``python benchmarks/modality_baselines.py [--encoder pca] [--latent-dim 32] [--cv 5] [--seed 0]``
"""

from __future__ import annotations

import argparse
from typing import Sequence

import pandas as pd

from biodiffuse.baselines import cross_validate_modality, summarize_folds
from biodiffuse.datasets import tcga_acc, tcga_brca


def print_tables(encoder: str = "pca", latent_dim: int = 32, cv: int = 5, seed: int = 0) -> None:
    """Print the baseline tables for TCGA BRCA (train split) and ACC.

    BRCA: protein from mrna + mirna (150 patients). ACC: each modality from the other four
    (the 43 patients with all five). Scores as in :func:`cross_validate_modality`, averaged
    by :func:`summarize_folds`.

    Parameters
    ----------
    encoder
        Encoder of every modality (``"pca"`` or ``"autoencoder"``).
    latent_dim
        Requested latent size.
    cv
        Number of folds.
    seed
        Fold split and encoder seed.
    """
    pd.set_option("display.width", 140)
    print(f"encoder={encoder} latent_dim={latent_dim} cv={cv} seed={seed}; R^2 global (r2_score_modality)")
    brca = tcga_brca("train")
    folds = cross_validate_modality(
        brca, "protein", ["mrna", "mirna"], latent_dim=latent_dim, encoder=encoder, cv=cv, seed=seed
    )
    print("\nTCGA BRCA (mixOmics train, 150 patients): protein from mrna + mirna")
    print(summarize_folds(folds).round(3).to_string())
    acc = tcga_acc()
    for target in acc.mod:
        conds = [m for m in acc.mod if m != target]
        folds = cross_validate_modality(acc, target, conds, latent_dim=latent_dim, encoder=encoder, cv=cv, seed=seed)
        print(f"\nTCGA ACC (43 patients with all five modalities): {target} from the other four")
        print(summarize_folds(folds).round(3).to_string())


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="pca", choices=("pca", "autoencoder"))
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--cv", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print_tables(encoder=args.encoder, latent_dim=args.latent_dim, cv=args.cv, seed=args.seed)


if __name__ == "__main__":
    main()
