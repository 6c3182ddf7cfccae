"""The cheap signals `advise` predicts a setting's harm from, before any model is trained
(docs/PROTOCOL.md "Advise: predicting the harm before training").

A setting is (base hospital, added hospital, label, balance mode). Its signals:

- From the label tables alone (milliseconds): the two hospitals' train prevalences and sizes as the
  training would see them (after the configured balancing), and how strongly hospital and label are
  associated in the pooled training distribution. Training batches take an equal share from each
  hospital (docs/PROTOCOL.md "Training"), so the pooled distribution gives each hospital weight 1/2
  whatever their sizes: ``phi`` (signed: positive when the added hospital has the higher prevalence),
  the mutual information between hospital and label (bits), and the smallest (hospital, label)
  group's share of a batch.
- From the images (seconds): how well the two hospitals can be told apart from their train images
  at a fixed label value (a domain classifier, as in Shen, Raji and Chen, "The Data Addition
  Dilemma", MLHC 2024): the cross-validated AUROC of a logistic regression on cheap image features
  (an 8x8 thumbnail, intensity statistics and local texture), averaged over the label's two
  values. 0.5: the hospital cannot be read from the image; 1: perfectly.
- A proxy of the study itself (seconds): the same comparison the study makes, with a logistic
  regression on those image features in place of the network: fitted on the base hospital's train
  images (the single model) and on both hospitals' (the pair, each hospital weighted equally, as
  equal-share batches do; under hospital-label balancing the negatives are down-weighted to the
  common prevalence, as the training undersamples them), each thresholded at its best validation
  macro-F1, and scored on both hospitals' val splits: ``proxy_delta`` = WGA(pair) - WGA(single),
  averaged over ``PROXY_REPEATS`` random train samples (one WGA on small val groups is noisy; the
  study averages its seeds for the same reason). Each model is fitted once per train sample and
  scored on whichever val splits a setting needs.
- A network proxy of the study (seconds per training arm): the same comparison with short runs of
  the study's own network, every label at once (:mod:`cxrstudy.evaluate.proxy_net`):
  ``net_delta`` = WGA(pair) - WGA(single), thresholded and scored as the linear proxy is, averaged
  over the arm's networks.

Label arrays, image arrays, scikit-learn and the proxy's small networks; no MLflow, no stored model.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrstudy.evaluate.proxy_net import NET_SEEDS, net_fit
from cxrstudy.labels import LABELS
from cxrstudy.train.balancing import BALANCE_HOSPITAL_LABEL, negative_weight, prevalence, undersample_negatives_to
from cxrstudy.train.scoring import group_accuracy, predict, select_threshold, worst_group

#: the table signals, in the order advice.csv lists them
TABLE_SIGNALS = ("base_prevalence", "added_prevalence", "prevalence_gap", "base_n", "added_n", "log_size_ratio",
                 "phi", "mutual_information", "min_group_share")
#: the image signal (absent when advise runs from the label tables alone)
DOMAIN_SIGNAL = "domain_auc"
#: images per (hospital, label value) the domain classifier reads at most
DOMAIN_SAMPLE = 300
#: cross-validation folds of the domain classifier
DOMAIN_FOLDS = 5
#: a label value needs this many images in each hospital for its domain classifier to be fitted
DOMAIN_MIN_PER_CLASS = 20


def balanced_labels(base_y: np.ndarray, added_y: np.ndarray, balance: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The two hospitals' train labels as the training keeps them under ``balance``: hospital-label
    balancing undersamples negatives to the higher prevalence (as ``train.balancing`` does); any
    other mode keeps every example (size matching keeps each hospital's prevalence)."""
    if balance != BALANCE_HOSPITAL_LABEL:
        return base_y, added_y
    target = max(prevalence(base_y), prevalence(added_y))
    return tuple(y[undersample_negatives_to(y, target, seed, what=what)]
                 for y, what in ((base_y, "base hospital"), (added_y, "added hospital")))


def table_signals(base_y: np.ndarray, added_y: np.ndarray, *, balance: str = "none", seed: int = 0) -> dict:
    """The table signals of adding the hospital with train labels ``added_y`` to the one with ``base_y``."""
    base_y, added_y = balanced_labels(np.asarray(base_y).astype(np.int64), np.asarray(added_y).astype(np.int64),
                                      balance, seed)
    pb, pa = prevalence(base_y), prevalence(added_y)
    q = (pb + pa) / 2  # the pooled prevalence under equal hospital shares
    phi = 0.0 if q <= 0 or q >= 1 else (pa - pb) / (2 * math.sqrt(q * (1 - q)))
    joint = np.array([[0.5 * (1 - pb), 0.5 * pb], [0.5 * (1 - pa), 0.5 * pa]])
    return {"base_prevalence": pb, "added_prevalence": pa, "prevalence_gap": pa - pb,
            "base_n": float(len(base_y)), "added_n": float(len(added_y)),
            "log_size_ratio": math.log(max(len(added_y), 1) / max(len(base_y), 1)),
            "phi": phi, "mutual_information": _mutual_information(joint), "min_group_share": float(joint.min())}


def _mutual_information(joint: np.ndarray) -> float:
    """I(hospital; label) in bits for a 2x2 joint distribution."""
    rows, cols = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (rows @ cols)[nz])).sum())


def image_features(images: np.ndarray) -> np.ndarray:
    """Cheap features of ``(n, H, W)`` uint8 images: an 8x8 thumbnail (area means), the intensity
    mean, standard deviation and 5/25/50/75/95th percentiles, and the texture a thumbnail averages
    away (a hospital's noise and sharpness, a sign's edges): the mean absolute Laplacian over each
    cell of a 4x4 grid and over the whole image; float32, one row per image."""
    x = np.asarray(images, dtype=np.float32) / 255.0
    n, h, w = x.shape
    bh, bw = max(h // 8, 1), max(w // 8, 1)
    thumb = x[:, :bh * 8, :bw * 8].reshape(n, 8, bh, 8, bw).mean(axis=(2, 4)).reshape(n, 64)
    flat = x.reshape(n, -1)
    stats = np.concatenate([flat.mean(1, keepdims=True), flat.std(1, keepdims=True),
                            np.percentile(flat, [5, 25, 50, 75, 95], axis=1).T], axis=1)
    return np.concatenate([thumb, stats, _texture(x)], axis=1).astype(np.float32)


def _texture(x: np.ndarray) -> np.ndarray:
    """The mean absolute 4-neighbour Laplacian of ``(n, H, W)`` float images over each cell of a 4x4
    grid (16 columns) and over the whole image (1 column)."""
    n, h, w = x.shape
    lap = np.abs(4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
    ch, cw = (h - 2) // 4, (w - 2) // 4
    cells = lap[:, :ch * 4, :cw * 4].reshape(n, 4, ch, 4, cw).mean(axis=(2, 4)).reshape(n, 16)
    return np.concatenate([cells, lap.reshape(n, -1).mean(1, keepdims=True)], axis=1)


def domain_auc(base: tuple[np.ndarray, np.ndarray], added: tuple[np.ndarray, np.ndarray], *, seed: int = 0,
               per_class: int = DOMAIN_SAMPLE) -> float:
    """How well the two hospitals can be told apart from their images: the mean, over the label's two
    values, of a logistic regression's cross-validated AUROC (``DOMAIN_FOLDS`` folds) on
    :func:`image_features` of a balanced sample (at most ``per_class`` images per hospital).
    ``base`` and ``added`` are ``(images, labels)``. NaN when no label value has
    ``DOMAIN_MIN_PER_CLASS`` images in both hospitals."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    aucs = []
    for value in (0, 1):
        idx = [np.flatnonzero(np.asarray(y) == value) for _, y in (base, added)]
        n = min(per_class, *(len(i) for i in idx))
        if n < DOMAIN_MIN_PER_CLASS:
            continue
        picks = [np.sort(rng.choice(i, size=n, replace=False)) for i in idx]
        X = np.concatenate([image_features(np.asarray(imgs)[p]) for (imgs, _), p in zip((base, added), picks)])
        h = np.repeat([0, 1], n)
        scores = np.zeros(len(h))
        for tr, te in StratifiedKFold(DOMAIN_FOLDS, shuffle=True, random_state=seed).split(X, h):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence warnings on separable thumbnails
                clf.fit(X[tr], h[tr])
            scores[te] = clf.predict_proba(X[te])[:, 1]
        aucs.append(roc_auc_score(h, scores))
    return float(np.mean(aucs)) if aucs else float("nan")


#: the study proxy's signal (absent when advise runs from the label tables alone)
PROXY_SIGNAL = "proxy_delta"
#: train images per hospital the study proxy fits on at most (a random sample per repeat)
PROXY_SAMPLE = 1500
#: independent train samples the study proxy averages its WGAs over
PROXY_REPEATS = 10


def _arm_weights(ys: list[np.ndarray], balance: str) -> np.ndarray:
    """Example weights of one arm's training hospitals (labels ``ys``): each hospital sums to 1 (equal
    shares); under hospital-label balancing, negatives weigh ``p(1-t) / (t(1-p))`` of a positive, which
    takes a hospital of prevalence ``p`` to the arm's highest prevalence ``t`` as undersampling would."""
    t = max(prevalence(y) for y in ys)
    out = []
    for y in ys:
        p = prevalence(y)
        w = np.ones(len(y))
        if balance == BALANCE_HOSPITAL_LABEL:
            w[y == 0] = negative_weight(p, t)
        out.append(w / w.sum())
    return np.concatenate(out)


def proxy_fit(train: list[tuple[np.ndarray, np.ndarray]], balance: str):
    """The study proxy's model of one arm: a logistic regression fitted on ``train`` (one
    ``(features, labels)`` per training hospital, weighted by :func:`_arm_weights`); returns a
    function from features to scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.concatenate([x for x, _ in train])
    y = np.concatenate([t for _, t in train])
    w = _arm_weights([t for _, t in train], balance)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y, logisticregression__sample_weight=w * len(y))
    return lambda features: clf.predict_proba(features)[:, 1]


def proxy_wga(scores: dict, val: dict, n_own: int) -> float:
    """The worst-group accuracy of one arm's model on the val images ``val`` (hospital -> (features,
    labels)), whose scores are ``scores`` (hospital -> scores), thresholded at the best macro-F1 on
    the val images of its ``n_own`` training hospitals (the first ``n_own`` of ``val``)."""
    envs = list(val)
    own = envs[:n_own]
    thr, _ = select_threshold(np.concatenate([val[e][1] for e in own]), np.concatenate([scores[e] for e in own]))
    groups = group_accuracy(np.concatenate([[e] * len(scores[e]) for e in envs]),
                            np.concatenate([val[e][1] for e in envs]),
                            predict(np.concatenate([scores[e] for e in envs]), thr))
    return worst_group(groups)[0]


#: the network proxy's signal (:mod:`cxrstudy.evaluate.proxy_net`; absent without images)
NET_SIGNAL = "net_delta"
#: the columns of a settings' signal table, after the setting's own
SIGNAL_COLUMNS = TABLE_SIGNALS + (DOMAIN_SIGNAL, PROXY_SIGNAL, NET_SIGNAL, "table_seconds", "image_seconds")


def _sample(n: int, env: str, repeat: int, seed: int) -> np.ndarray:
    """Repeat ``repeat``'s train sample of ``env`` (at most PROXY_SAMPLE of its ``n`` images): the same
    for every setting that reads that hospital, so the single and pair models of a repeat share it."""
    if n <= PROXY_SAMPLE:
        return np.arange(n)
    rng = np.random.default_rng([seed, repeat, zlib.crc32(env.encode())])
    return np.sort(rng.choice(n, PROXY_SAMPLE, replace=False))


def setting_signals(spec, settings, *, images: bool = True, seed: int = 0, progress: bool = True):
    """The signals of each setting ``(base, added, label, balance)`` of the hospitals in ``spec``
    (a ``DataSpec``): one row per setting with :data:`SIGNAL_COLUMNS`. Table signals read the train
    split's labels; with ``images``, the domain classifier and both study proxies read the cached train
    and val images (built on first use, at ``spec.image_size``). Each row logs what its signals cost
    (seconds); what several settings share (the domain classifier and the proxy's pair models of one
    hospital pair and label, a base hospital's single models of a label, a hospital's image features,
    the network proxy's networks of an arm, which serve every label) is charged to the first of them."""
    labels_of, images_of, domain, feats, fitted, nets, pixels = {}, {}, {}, {}, {}, {}, {}

    def labelled(env, split, label):
        """(image features, labels) of every image of the split."""
        if (env, split) not in feats:
            entry = spec.entry(env, split, progress=False)
            feats[(env, split)] = (entry, image_features(entry.images()[entry.index["slot"].to_numpy()]))
        entry, x = feats[(env, split)]
        return x, entry.index[label].to_numpy().astype(np.int64)

    def scores(trained_on, label, balance, repeat, envs):
        """The val scores, on each hospital of ``envs``, of repeat ``repeat``'s model trained on
        ``trained_on``: fitted once, whichever hospitals it is then scored on."""
        key = (trained_on, label, balance, repeat)
        if key not in fitted:
            full = {env: labelled(env, "train", label) for env in trained_on}
            keeps = {env: _sample(len(y), env, repeat, seed) for env, (_, y) in full.items()}
            fitted[key] = (proxy_fit([(x[keeps[env]], y[keeps[env]]) for env, (x, y) in full.items()], balance), {})
        model, done = fitted[key]
        for env in envs:
            if env not in done:
                done[env] = model(labelled(env, "val", label)[0])
        return done

    def proxy(trained_on, scored_on, label, balance):
        """The proxy's WGA on the val images of ``scored_on`` (the hospitals ``trained_on`` first),
        averaged over PROXY_REPEATS train samples, of the model trained on ``trained_on``."""
        val = {env: labelled(env, "val", label) for env in scored_on}
        return float(np.mean([proxy_wga(scores(trained_on, label, balance, repeat, scored_on), val, len(trained_on))
                              for repeat in range(PROXY_REPEATS)]))

    def raw(env, split):
        """(uint8 images, labels of every label in LABELS) of every image of the split."""
        if (env, split) not in pixels:
            entry = spec.entry(env, split, progress=False)
            pixels[(env, split)] = (np.ascontiguousarray(entry.images()[entry.index["slot"].to_numpy()]),
                                    entry.index[list(LABELS)].to_numpy().astype(np.int64))
        return pixels[(env, split)]

    def net(trained_on, scored_on, label, balance):
        """The network proxy's WGA on the val images of ``scored_on`` (the hospitals ``trained_on``
        first), averaged over the arm's NET_SEEDS networks (each fitted once per arm and balance,
        every label at once)."""
        j = LABELS.index(label)
        val = {env: (None, raw(env, "val")[1][:, j]) for env in scored_on}
        wgas = []
        for repeat in range(NET_SEEDS):
            key = (trained_on, balance, repeat)
            if key not in nets:
                nets[key] = (net_fit([raw(env, "train") for env in trained_on], balance,
                                     seed=seed * NET_SEEDS + repeat), {})
            model, done = nets[key]
            for env in scored_on:
                if env not in done:
                    done[env] = model(raw(env, "val")[0])
            wgas.append(proxy_wga({env: done[env][:, j] for env in scored_on}, val, len(trained_on)))
        return float(np.mean(wgas))

    rows = []
    for base, added, label, balance in tqdm(list(settings), desc="signals", unit="setting", disable=not progress):
        t0 = time.perf_counter()
        for env in (base, added):
            if (env, label) not in labels_of:
                if images:
                    entry = spec.entry(env, "train", progress=False)
                    images_of[env] = entry
                    labels_of[(env, label)] = entry.index[label].to_numpy().astype(np.int64)
                else:
                    labels_of[(env, label)] = spec.rows(env, "train")[label].to_numpy().astype(np.int64)
        row = {"base": base, "added": added, "label": label, "balance": balance,
               **table_signals(labels_of[(base, label)], labels_of[(added, label)], balance=balance, seed=seed)}
        t1 = time.perf_counter()
        row["table_seconds"] = t1 - t0
        row["image_seconds"] = 0.0
        if images:
            pair = (frozenset((base, added)), label)
            if pair not in domain:
                def sample(env):
                    entry = images_of[env]
                    return entry.images()[entry.index["slot"].to_numpy()], labels_of[(env, label)]
                domain[pair] = domain_auc(sample(base), sample(added), seed=seed)
            row[DOMAIN_SIGNAL] = domain[pair]
            both = tuple(sorted((base, added)))  # the pair's model serves both directions of the pair
            row[PROXY_SIGNAL] = proxy(both, both, label, balance) - proxy((base,), (base, added), label, balance)
            row[NET_SIGNAL] = net(both, both, label, balance) - net((base,), (base, added), label, balance)
            row["image_seconds"] = time.perf_counter() - t1
        rows.append(row)
    return pd.DataFrame(rows)
