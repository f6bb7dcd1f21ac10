"""The Python API for orchestrators, and the recipes in docs/recipes that use it."""

from __future__ import annotations

import ast
import configparser
import json
import re
from pathlib import Path

import pytest
import yaml
from otc_server import ticket_records

import otc_pipeline
from otc_pipeline.errors import ConfigError, SchemaNotReady, SourceError
from otc_pipeline.pipeline import RunSummary

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes"


def write_tickets(path: Path, count: int = 4, bad: int = 0) -> Path:
    records = list(ticket_records(count))
    for record in records[:bad]:
        record["TKT-Ticket ID"] = "not-a-number"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_load_returns_run_summaries_and_exit_code_matches_the_cli(
    db_url: str, tmp_path: Path
) -> None:
    good = write_tickets(tmp_path / "tickets.json", bad=1)
    summaries = otc_pipeline.load("tickets", good, database_url=db_url, chunk_size=2)
    assert [type(s) for s in summaries] == [RunSummary]
    (summary,) = summaries
    assert (summary.view, summary.status, summary.inserted, summary.rejected) == (
        "tickets",
        "partial",
        3,
        1,
    )
    assert otc_pipeline.exit_code(summaries) == 3
    dry = otc_pipeline.load("tickets", str(good), database_url=db_url, dry_run=True)
    assert dry[0].status == "dry-run" and dry[0].run_id is None


def test_a_failed_view_is_a_summary_not_an_exception(db_url: str, tmp_path: Path) -> None:
    broken = tmp_path / "tickets.json"
    broken.write_text('[{"TKT-Ticket ID": 1', encoding="utf-8")
    (summary,) = otc_pipeline.load("tickets", broken, database_url=db_url)
    assert summary.status == "failed" and summary.error
    assert otc_pipeline.exit_code([summary]) == 1


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_load_raises_the_documented_errors(db_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as bad_view:
        otc_pipeline.load("nope", "api", database_url=db_url)
    assert bad_view.value.exit_code == 2
    with pytest.raises(SourceError):
        otc_pipeline.load("tickets", tmp_path / "missing.json", database_url=db_url)
    with pytest.raises(ConfigError):
        otc_pipeline.load(
            "tickets", write_tickets(tmp_path / "t.json"), database_url=db_url, chunk_size=0
        )


def test_check_freshness_matches_status_check(db_url: str, tmp_path: Path) -> None:
    otc_pipeline.load("tickets", write_tickets(tmp_path / "tickets.json"), database_url=db_url)
    views = otc_pipeline.check_freshness(database_url=db_url)
    assert {v.view: v.state for v in views} == {
        "tickets": "fresh",
        "timesheets": "error",
        "comments": "error",
    }
    assert [v.view for v in views if v.failing] == ["timesheets", "comments"]
    assert otc_pipeline.check_freshness(database_url=db_url, warn_after=1e-6)[0].state == "warn"
    with pytest.raises(ConfigError, match="error_after must be a positive duration"):
        otc_pipeline.check_freshness(database_url=db_url, error_after="soon")


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_check_freshness_on_an_empty_database_says_what_to_do(empty_db_url: str) -> None:
    with pytest.raises(SchemaNotReady, match="load something first"):
        otc_pipeline.check_freshness(database_url=empty_db_url)


def test_importing_the_package_stays_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, otc_pipeline; print('sqlalchemy' in sys.modules, 'httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- recipes -----------------------------------------------------------------------------


def _api_calls(tree: ast.AST) -> set[str]:
    """Names called as otc_pipeline.<name>(…) in a recipe."""
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "otc_pipeline"
    }


@pytest.mark.parametrize("name", ["airflow_otc_dag.py", "dagster_otc.py"])
def test_python_recipes_compile_and_use_only_the_documented_api(name: str) -> None:
    source = (RECIPES / name).read_text(encoding="utf-8")
    tree = ast.parse(source, filename=name)
    compile(tree, name, "exec")
    calls = _api_calls(tree)
    assert {"load", "exit_code", "check_freshness"} <= calls
    assert calls <= set(otc_pipeline.__all__)


def test_airflow_recipe_skips_on_exit_75() -> None:
    tree = ast.parse((RECIPES / "airflow_otc_dag.py").read_text(encoding="utf-8"))
    keywords = {
        kw.arg: kw.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "BashOperator"
        for kw in node.keywords
    }
    assert isinstance(keywords["skip_on_exit_code"], ast.Name)  # EX_TEMPFAIL = 75
    assert "EX_TEMPFAIL = 75" in (RECIPES / "airflow_otc_dag.py").read_text(encoding="utf-8")
    assert any(
        isinstance(node, ast.Call) and getattr(node.func, "id", None) == "PythonOperator"
        for node in ast.walk(tree)
    )


def test_systemd_recipes_parse_and_treat_75_as_no_failure() -> None:
    units = {}
    for name in ("otc-load.service", "otc-load.timer"):
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
        parser.read_string((RECIPES / name).read_text(encoding="utf-8"), source=name)
        units[name] = parser
    service, timer = units["otc-load.service"], units["otc-load.timer"]
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"].endswith("otc load all")
    assert "75" in service["Service"]["SuccessExitStatus"].split()
    assert timer["Timer"]["OnCalendar"] and timer["Install"]["WantedBy"] == "timers.target"


def test_kubernetes_recipe_forbids_overlap_and_handles_exit_codes() -> None:
    documents = list(yaml.safe_load_all((RECIPES / "otc-cronjob.yaml").read_text(encoding="utf-8")))
    kinds = [d["kind"] for d in documents]
    assert kinds == ["CronJob", "CronJob", "PersistentVolumeClaim"]
    load = documents[0]["spec"]
    assert load["concurrencyPolicy"] == "Forbid"
    job = load["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    rules = job["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2]
    container = job["template"]["spec"]["containers"][0]
    assert container["args"] == ["otc", "load", "all"]
    assert documents[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "args"
    ] == ["otc", "status", "--check"]


def test_cron_recipe_lines_are_valid_cron_d_entries() -> None:
    entry = re.compile(r"^(\S+\s+){5}otc\s+\S.*$")  # five time fields, the user, a command
    variable = re.compile(r"^[A-Z_]+=\S*$")
    jobs = []
    for line in (RECIPES / "otc.cron").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        assert variable.match(line) or entry.match(line), line
        if entry.match(line):
            jobs.append(line)
            assert "%" not in line  # cron turns % into a newline
    assert any("otc load all" in job for job in jobs)
    assert any("otc status --check" in job for job in jobs)
