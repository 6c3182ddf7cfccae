"""The study on real dataset layouts, end to end: ``main -P source=real`` over miniature copies of
CheXpert and PadChest as distributed (tests/realdata_fixtures.py, with generated patients whose
positive images carry a learnable signal): preprocess, train, register, compare and analyze, then
what a user looks at. The study runs once (module fixture); each test reads one aspect of it."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.report import SYNTHETIC_WARNING
from cxrstudy.data.dataspec import DataSpec
from cxrstudy.tracking import keys
from cxrstudy.train.config import DATA_NAME_DIGITS
from cxrstudy.tracking.runs import SYNTHETIC_BANNER
from realdata_fixtures import make_trainable_data_root

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "entrypoints"))

ENVS = ("cxp", "pad")  # CheXpert-v1.0-small (JPEG, plain CSV) and PadChest (16-bit PNG folders, gzipped CSV)
N_PATIENTS = 80  # per hospital: every (hospital, label value) group of val and test holds 5-8 images


def study_argv(data_root) -> list[str]:
    """What the README's "Running on real data" names, at test size (tiny network, 32 px; one seed,
    so no A/A noise floor, which would train every model again at a second seed)."""
    return ["--source", "real", "--data_root", str(data_root), "--envs", ",".join(ENVS), "--labels", "Any",
            "--seeds", "0", "--balances", "none", "--preset", "cpu", "--image_size", "32", "--batch_size", "16",
            "--max_steps", "10", "--eval_every", "5", "--n_bootstrap", "50", "--noise_floor", "false", "--workers", "1"]


def test_the_readme_names_the_command_this_test_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running on real data"):]
    block = re.search(r"```bash\n(mlflow run \. -e main -P source=real -P data_root=<dir> -P envs=cxp,pad.*?)```",
                      section, re.S).group(1)
    named = dict(re.findall(r"-P (\w+)=(\S+)", block))
    argv = study_argv("<dir>")
    assert named == dict(zip((a[2:] for a in argv[::2]), argv[1::2]))


def test_too_few_patients_is_one_line_before_any_run(store, tmp_path, capsys):
    """The hand-written rows alone (a few patients per hospital) leave splits without a label value:
    main says which, in one line, before it opens a run or builds a cache."""
    import main as main_entry

    data = make_trainable_data_root(tmp_path, envs=ENVS, n_patients=0)
    with pytest.raises(SystemExit) as e:
        main_entry.main(study_argv(data["data_root"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1, err
    assert err[0].startswith("error: the study cannot train and score every setting: ")
    assert re.search(r"(cxp|pad) (val|test) has no (positives|negatives) for Any", err[0]), err[0]
    assert mlflow.search_runs(search_all_experiments=True).empty
    assert not any((tmp_path / "cache").rglob("manifest.json"))  # no cache entry built


@pytest.fixture(scope="module")
def study(module_store):
    import main as main_entry

    _, folder = module_store
    data = make_trainable_data_root(folder, envs=ENVS, n_patients=N_PATIENTS)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main_entry.main(study_argv(data["data_root"]))
    except SystemExit as e:  # a failed step: show what main said
        raise AssertionError(f"main exited {e.code}:\n{err.getvalue()[-3000:]}") from None
    runs = mlflow.search_runs(search_all_experiments=True)
    return {"data": data, "folder": folder, "stdout": out.getvalue(), "stderr": err.getvalue(), "runs": runs}


def _entry(study, entry):
    r = study["runs"]
    return r[r[f"tags.{keys.ENTRY_TAG}"] == entry]


def test_every_step_of_the_real_path_finished(study):
    runs = study["runs"]
    assert set(runs["status"]) == {"FINISHED"}, runs[["status", f"tags.{keys.ENTRY_TAG}"]]
    counts = runs[f"tags.{keys.ENTRY_TAG}"].value_counts().to_dict()
    # 2 single-hospital models + 1 pair; (cxp, pad) and (pad, cxp)
    assert counts == {"main": 1, "preprocess": 1, "train": 3, "compare": 2, "analyze": 1}, counts
    parent = _entry(study, "main").run_id.iloc[0]
    assert (runs.loc[runs[f"tags.{keys.ENTRY_TAG}"] != "main", "tags.mlflow.parentRunId"] == parent).all()
    assert (runs[f"tags.{keys.SYNTHETIC_TAG}"] == "false").all()
    pre = _entry(study, "preprocess").iloc[0]
    for env in ENVS:  # every usable row of the label files reached the cache; the truncated image was skipped
        info = study["data"][env]
        assert pre[f"metrics.count/{env}/rows"] == info.rows
        assert pre[f"metrics.count/{env}/dropped_missing"] == info.dropped_missing
        assert sum(pre[f"metrics.count/{env}/{s}/skipped"] for s in ("train", "val", "test")) == 1
    train = _entry(study, "train")
    assert sorted(train["tags.envs"]) == ["cxp", "cxp,pad", "pad"]
    # the models learned the signal: none predicts one class, and validation tells the labels apart
    assert f"tags.{keys.CONSTANT_MODEL_TAG}" not in train or train[f"tags.{keys.CONSTANT_MODEL_TAG}"].isna().all()
    assert (train["metrics.val/auroc"] > 0.75).all(), train["metrics.val/auroc"]
    compare = _entry(study, "compare")
    used = ("wga_single", "wga_pair", "delta_wga", "delta_ci_low", "delta_ci_high", "worst_group_n_single",
            "n_constant_models", *keys.PER_HOSPITAL_WGA)
    metric = {k: compare[f"metrics.{keys.compare_metric(k)}"] for k in used}
    for k in ("wga_single", "wga_pair", *keys.PER_HOSPITAL_WGA):
        assert metric[k].between(0, 1).all(), k
    assert ((metric["delta_ci_low"] <= metric["delta_wga"]) & (metric["delta_wga"] <= metric["delta_ci_high"])).all()
    assert (metric["wga_single_base"] > 0.5).all()  # each hospital's own model scores its test groups
    assert (metric["worst_group_n_single"] >= 5).all() and (metric["n_constant_models"] == 0).all()


def test_the_report_and_headline_say_the_data_are_real(study, tmp_path):
    analyze = _entry(study, "analyze").iloc[0]
    names = {a.path for a in MlflowClient().list_artifacts(analyze.run_id)}
    assert {"report.md", "settings.csv"} <= names and any(n.endswith(".png") for n in names)
    report = Path(mlflow.artifacts.download_artifacts(run_id=analyze.run_id, artifact_path="report.md",
                                                      dst_path=str(tmp_path))).read_text()
    assert "source: real" in report and "SYNTHETIC" not in report and SYNTHETIC_WARNING not in report, report[:2000]
    assert "## " in report and "WGA" in report
    settings = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=analyze.run_id, artifact_path="settings_provenance.csv", dst_path=str(tmp_path)))
    assert len(settings) == 2 and set(settings["source"]) == {"real"} and not settings["synthetic"].any()
    # the headline, as main prints it: one line per balance mode, no synthetic banner anywhere
    assert "[balance=none] Adding a second hospital lowered WGA in" in study["stdout"]
    assert "of 2 settings" in study["stdout"]
    printed = study["stdout"] + study["stderr"]
    assert "SYNTHETIC" not in printed and SYNTHETIC_BANNER not in printed
    assert analyze["params.cfg.analysis.n_settings_total"] == "2"


def test_registered_models_and_versions_say_real(study):
    client = MlflowClient()
    names = sorted(m.name for m in client.search_registered_models())
    # one name per (hospitals, label, balance) and dataset: the name ends in the data fingerprint's start
    assert [n.rsplit("-d", 1)[0] for n in names] == ["cxrstudy-real-cxp-any-none", "cxrstudy-real-cxp-pad-any-none",
                                                     "cxrstudy-real-pad-any-none"]
    train = _entry(study, "train").set_index("run_id")
    for name in names:
        (version,) = client.search_model_versions(f"name = '{name}'")
        assert name.endswith("-d" + version.tags[keys.DATA_FINGERPRINT_TAG][:DATA_NAME_DIGITS])
        assert version.tags[keys.SYNTHETIC_TAG] == "false"
        assert "SYNTHETIC" not in version.description
        run = train.loc[version.run_id]
        assert run["tags.registered_model"] == name
        assert version.tags[keys.DATA_FINGERPRINT_TAG] == run[f"tags.{keys.DATA_FINGERPRINT_TAG}"]
        assert version.tags["hospitals"] == run["tags.envs"]


def test_training_runs_carry_the_fingerprint_of_the_label_files(study):
    spec = DataSpec(source="real", data_root=str(study["data"]["data_root"]), image_size=32)
    train = _entry(study, "train")
    for _, run in train.iterrows():
        envs = run["tags.envs"].split(",")
        assert run[f"tags.{keys.DATA_FINGERPRINT_TAG}"] == spec.fingerprint(envs), envs
    assert train[f"tags.{keys.DATA_FINGERPRINT_TAG}"].is_unique  # cxp, pad and cxp+pad read different files
    # the fingerprint follows the label files: rewrite one (a newer modification time) and it changes
    csv = study["data"]["pad"].csv_files[0]
    st = csv.stat()
    try:
        os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert spec.fingerprint(["pad"]) != train.loc[train["tags.envs"] == "pad", f"tags.{keys.DATA_FINGERPRINT_TAG}"].iloc[0]
    finally:
        os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---------------------------------------------------------------------------------------------------
# nothing tracked points at this machine or at a patient

#: an absolute POSIX path: a slash at the start of a value or after a separator, then a name
ABS_PATH = re.compile(r"(?:^|[\s\"'=(\[,;])(/[\w.~-]+(?:/[\w.~-]*)+)")
TEXT_SUFFIXES = {".md", ".csv", ".txt", ".json", ".yaml", ".yml", ".py", ".html", ""}


def _forbidden_strings(study) -> tuple[set[str], set[str]]:
    """(the study's own folders: searched everywhere; this machine's home and temp folders: searched
    in what we log, not in MLflow's system tags, which name where the repository itself lives)."""
    folder, data_root = study["folder"], study["data"]["data_root"]
    own = {str(folder), str(Path(folder).resolve()), str(data_root), str(Path(data_root).resolve())}
    machine = {str(Path.home()), tempfile.gettempdir().rstrip("/") + "/"}
    return ({s for s in own if s not in ("", "/")}, {s for s in machine if s not in ("", "/")})


#: how each dataset writes a subject id into its image paths (the patient folder or file name)
PATH_FORMS = {"cxp": lambda sid: f"patient{int(sid):05d}/", "nih": lambda sid: f"{int(sid):08d}_",
              "mimic": lambda sid: f"/p{sid}/", "pad": lambda sid: None}


def _subject_patterns(study) -> dict[str, re.Pattern]:
    """Every subject of the study's hospitals, as its id (when it is long enough to search for: the
    generated patients' ids all are) and as its dataset writes it into image paths."""
    pats = {}
    for env in ENVS:
        info = study["data"][env]
        assert info.extra["generated_subjects"] <= info.subjects
        for sid in info.subjects:
            forms = [re.escape(f) for f in [PATH_FORMS[env](sid)] if f]
            if len(sid) >= 5:
                forms.append(rf"(?<![0-9]){re.escape(sid)}(?![0-9])")
            if forms:  # PadChest's hand-written ids ("pat1") are too short to search for and in no path
                pats[f"{env} {sid}"] = re.compile("|".join(forms))
    assert sum(len(study["data"][env].extra["generated_subjects"]) for env in ENVS) == N_PATIENTS * len(ENVS)
    return pats


def _tracked_texts(study) -> list[tuple[str, str, str, bool]]:
    """(owner, thing, text, owned) for every param, tag, dataset input, registry entry and text
    artifact of the study: ``owner`` is the run or model, ``thing`` what it holds (``param
    cfg.envs``, ``artifact MLmodel``); ``owned`` is False for MLflow's own system tags (``mlflow.*``:
    the source script, the user), which are only searched for the data and the store's folder."""
    client = MlflowClient()
    items = []
    for run_id in study["runs"].run_id:
        run = client.get_run(run_id)
        items += [(f"run {run_id}", f"param {k}", v, True) for k, v in run.data.params.items()]
        items += [(f"run {run_id}", f"tag {k}", v, not k.startswith("mlflow.")) for k, v in run.data.tags.items()]
        for d in run.inputs.dataset_inputs:
            ds = d.dataset
            items.append((f"run {run_id}", f"dataset input {ds.name}", f"{ds.source} {ds.schema} {ds.profile}", True))
    for m in client.search_registered_models():
        items.append((f"model {m.name}", "registered model", f"{m.description or ''} {m.tags}", True))
        for v in client.search_model_versions(f"name = '{m.name}'"):
            items.append((f"model {m.name} v{v.version}", "version description", v.description or "", True))
            items += [(f"model {m.name} v{v.version}", f"version tag {k}", t, True) for k, t in v.tags.items()]
    # every file the study stored: the runs' artifacts and their logged models, read where the store
    # keeps them; the store's own address (MLmodel's artifact_path) is MLflow's, not this machine's data
    run_ids = set(study["runs"].run_id)
    exp_ids = sorted(set(study["runs"].experiment_id))
    stored = [(client.get_run(r).info.artifact_uri, f"run {r}") for r in sorted(run_ids)]
    stored += [(m.artifact_location, f"logged model {m.model_id}") for m in client.search_logged_models(exp_ids)
               if m.source_run_id in run_ids]
    assert len(stored) == len(run_ids) + 3  # one logged model per trained model
    for location, owner in stored:
        root = Path(location.removeprefix("file://"))
        for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
            text = f.read_text(errors="replace").replace(location, "<artifact location>")
            items.append((owner, f"artifact {f.relative_to(root)}", text, True))
    things = {t for _, t, _, _ in items}
    assert {"artifact report.md", "artifact MLmodel", "param cfg.envs"} <= things, sorted(things)
    return items


def test_nothing_tracked_holds_an_absolute_path_or_a_subject_id(study):
    own, machine = _forbidden_strings(study)
    subjects = _subject_patterns(study)
    leaks = {}  # what holds it -> (how many runs or models, one example)
    for owner, thing, text, owned in _tracked_texts(study):
        found = [f"{s!r}" for s in sorted(own) if s in text]
        if owned:
            found += [f"{s!r}" for s in sorted(machine) if s in text]
            found += [f"absolute path {m!r}" for m in ABS_PATH.findall(text)]
        found += [f"subject id {sid}" for sid, pat in subjects.items() if pat.search(text)]
        if found:
            n, example = leaks.get(thing, (0, ""))
            leaks[thing] = (n + 1, example or f"{owner}: {'; '.join(found)}")
    assert not leaks, "tracked values that point at this machine or at a patient:\n" + "\n".join(
        f"{thing} (in {n}), e.g. {example}" for thing, (n, example) in sorted(leaks.items()))
