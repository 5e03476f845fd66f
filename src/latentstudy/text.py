"""The report's prose in one place: the rule as the page states it, and every figure's title and
caption (report.py and gallery.py draw the figures; page.py lays them out)."""

from __future__ import annotations

from latentstudy.stats import SET_LEVEL, SET_NAME

RULE = ("For each purpose the criterion is measured on every test example at every latent size. Each of "
        "{draws} bootstrap draws resamples three things: the test examples (the same resample for every size, "
        "so hard examples are hard at every size), each size's seed replicates, and the search itself (each "
        "size's trials are resampled and the one with the best validation objective taken, as the search did, "
        "so the beta and lr a rerun might have drawn are in the interval). A size's value is the mean over its "
        "best configuration's seed replicates when every size has them; otherwise the search's pick, with the "
        "seed spread added to its interval. The spread of the resampled values is each size's standard error "
        "(SE), and the spread of its difference to the best size is the SE of that difference. The answer is "
        "the smallest k that is worse than the best by no more than one SE of their difference{margin}: the "
        "simplest model the data cannot tell from the best (the one-standard-error rule). Stability is how "
        f"often the same rule picks each k across the resamples; the {SET_NAME} holds the sizes it picks in "
        f"{SET_LEVEL:.0%} of them. The search applied the same rule to the validation split to decide which "
        "sizes to add; the numbers here are on the test split only.")

# file -> (title, caption); a title with {k} names the size its figure shows
FIGURES = {
    "answers.png": ("The criteria against latent size",
        "One panel per purpose: the mean over test examples of each size's model (the mean over its seed "
        "replicates when every size has them; else the search's pick), with its 95% bootstrap interval, which "
        "also resamples the seeds and the search's trials at that size. The rule compares sizes by their paired "
        "differences (recommendation.json has them). The dashed line is the chosen k, the band the "
        f"sizes the rule picks in {SET_LEVEL:.0%} of resamples; hollow red markers are sizes the search added "
        "(above or between grid points)."),
    "distortion.png": ("Distortion against latent size",
        "Squared error of every model, and the VAE's distortion, rate and bounds. PCA is the best linear code; "
        "the gap to the autoencoder and VAE is what nonlinearity buys. The VAE's D alone is not comparable "
        "across k (each k has its own beta); the IWAE bound is."),
    "rate_distortion.png": ("Rate-distortion plane",
        "Each point is a finished VAE trial (validation split). Along the front, lower distortion costs "
        "rate; points with equal ELBO can sit far apart on it (Alemi et al. 2018)."),
    "active_units.png": ("Active units",
        "Where the line falls below the dotted identity, the VAE switched units off (posterior collapse "
        "of those units): that part of k is wasted capacity."),
    "reconstructions.png": ("Reconstructions",
        "Test inputs in the first row, then each model's reconstruction at each latent size. Watch where "
        "details (strokes, thin parts) appear as k grows, and where PCA blurs what the networks keep."),
    "samples.png": ("Samples from the prior",
        "Decoded z ~ N(0, I). Sharp, varied samples mean the prior region is well used; blurry or repeated "
        "ones mean the decoder only learned the posterior's neighbourhood."),
    "interpolations.png": ("Interpolations (VAE k={k})",
        "Each row decodes points on the straight line between mu(x1) and mu(x2). Smooth, plausible "
        "in-between images mean the latent space is continuous."),
    "traversals.png": ("Latent traversals (VAE k={k})",
        "One row per latent unit (highest KL first): the unit sweeps from -3 to 3 while the others stay at "
        "mu of one test image. Rows that do not change are inactive units."),
    "latent_2d.png": ("The 2-D latent space",
        "Test set codes coloured by label. The autoencoder spreads out freely; the VAE's KL term packs the "
        "codes into the unit ball (dashed) around the prior."),
    "optuna_history.png": ("Optuna optimisation history",
        "Validation objective of each finished VAE trial, per latent size; the line is the best so far. "
        "A line still falling at the end means more trials could help."),
    "param_importances.png": ("Hyperparameter importances",
        "fANOVA importance of beta and the learning rate for the validation objective at each size "
        "(few trials make this rough)."),
}


def figure(name: str, **values) -> tuple[str, str]:
    """(title, caption) of a figure file; values fill its title (k)."""
    title, caption = FIGURES[name]
    return title.format(**values), caption
