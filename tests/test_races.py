"""Store writes that parallel workers make at the same moment (the CI failure of stop 30): two
requests that set a new alias of one registered model at once lose an insert to each other
(IntegrityError) on a local ``mlflow server`` in front of SQLite; the write is done again, and
``best`` ends on the best version even when a worker set it from a stale list of versions."""

from __future__ import annotations

import threading

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cxrstudy.tracking import registry
from cxrstudy.tracking.races import lost_race, retry_lost_race
from cxrstudy.tracking.server import local_server

SQLITE_LOST = ("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases.name\n"
               "(Background on this error at: https://sqlalche.me/e/21/gkpj)")
POSTGRES_LOST = "(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint \"alias_pk\""


def test_a_lost_race_is_done_again_and_other_errors_are_not():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException(SQLITE_LOST if len(calls) == 1 else POSTGRES_LOST)
        return "done"

    assert retry_lost_race(flaky, wait_s=0) == "done" and len(calls) == 3
    assert lost_race(MlflowException(SQLITE_LOST)) and lost_race(MlflowException(POSTGRES_LOST))
    assert not lost_race(MlflowException("RESOURCE_DOES_NOT_EXIST: Registered Model with name=m not found"))
    assert not lost_race(ValueError("IntegrityError"))  # only the store's answers count

    calls.clear()

    def missing():
        calls.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: Registered Model with name=m not found")

    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        retry_lost_race(missing, wait_s=0)
    assert len(calls) == 1  # not retried

    calls.clear()

    def always_lost():
        calls.append(1)
        raise MlflowException(SQLITE_LOST)

    with pytest.raises(MlflowException, match="UNIQUE constraint"):
        retry_lost_race(always_lost, tries=4, wait_s=0)
    assert len(calls) == 4  # gives up after its tries, with the store's own words


def _versions(client, name: str, wgas: list[float]) -> None:
    client.create_registered_model(name)
    for i, wga in enumerate(wgas):
        client.create_model_version(name, f"s3://bucket/{name}/{i}", tags={registry.BEST_METRIC_TAG: str(wga)})


def _at_once(targets) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(target):
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - collected, asserted on below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_parallel_workers_setting_aliases_on_one_server_all_succeed_and_best_is_the_best(store, tmp_path,
                                                                                         monkeypatch):
    with local_server(store, tmp_path / "mlartifacts", log_dir=tmp_path / "logs") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        client = MlflowClient()
        _versions(client, "m", [0.5, 0.7])
        # each round, two workers set a new alias at the same moment: unguarded, about one round in six
        # loses an insert (UNIQUE constraint failed) on this server
        for k in range(30):
            errors = _at_once([lambda k=k, v=v: registry.set_alias("m", f"seed{k}", v) for v in (1, 2)])
            assert errors == [], [str(e)[:300] for e in errors]
            assert int(client.get_registered_model("m").aliases[f"seed{k}"]) in (1, 2)
        # three workers of each of eight names recompute best at once; it ends on each name's best version
        wgas = {f"n{i}": [0.3 + 0.05 * ((i + j) % 3) for j in range(3)] for i in range(8)}
        for name, w in wgas.items():
            _versions(client, name, w)
        errors = _at_once([lambda n=n: registry.update_best_alias(n) for n in wgas for _ in range(3)])
        assert errors == [], [str(e)[:300] for e in errors]
        for name, w in wgas.items():
            assert int(client.get_registered_model(name).aliases[registry.BEST_ALIAS]) == w.index(max(w)) + 1


def test_best_set_from_a_stale_list_of_versions_is_set_again(store, monkeypatch):
    """Worker A lists the versions, B registers a better one and sets best, then A sets best from its
    stale list: A's look after writing sees the better version and puts best back on it."""
    client = MlflowClient()
    _versions(client, "m", [0.6, 0.9])
    real = MlflowClient.search_model_versions
    seen = []

    def stale_first(self, *args, **kwargs):
        found = real(self, *args, **kwargs)
        seen.append(len(found))
        return [v for v in found if int(v.version) == 1] if len(seen) == 1 else found

    monkeypatch.setattr(MlflowClient, "search_model_versions", stale_first)
    assert registry.update_best_alias("m") == 2
    assert int(client.get_registered_model("m").aliases[registry.BEST_ALIAS]) == 2
    assert len(seen) == 3  # set from the stale list (v1), looked again and set v2, looked again: agreed
