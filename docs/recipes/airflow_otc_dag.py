"""Airflow DAG: load the OTC views every night, then check that every view is fresh.

Copy into your DAGs folder. Two ways to run a load, pick one:

- ``otc_load_all`` (BashOperator) runs the ``otc`` command; ``skip_on_exit_code=75``
  turns a temporary refusal (another load holds a view, the API breaker is open, the
  hourly request cap is used up) into a *skipped* task instead of a failed one.
- ``otc_load_timesheets`` (PythonOperator) calls the Python API in the worker and
  maps the same outcomes onto Airflow's exceptions.

The connection settings come from the worker's environment (OTC_DATABASE_URL,
OTC_API_USER, OTC_API_PASSWORD, …) or an Airflow Variable/Connection you export into
``env``. Import paths are Airflow 2.x (in Airflow 3 the operators live in
``airflow.providers.standard.operators``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.exceptions import AirflowException, AirflowSkipException
from airflow.operators.bash import BashOperator
from airflow.operators.python import PythonOperator

EX_TEMPFAIL = 75  # otc: refused for now, a later run clears it


def load_timesheets() -> None:
    """Load the timesheets view from the OTC API through the Python API."""
    import otc_pipeline

    summaries = otc_pipeline.load("timesheets", "api")
    for summary in summaries:
        print(summary.as_dict())
    code = otc_pipeline.exit_code(summaries)
    if code == EX_TEMPFAIL:
        raise AirflowSkipException("; ".join(s.error or "" for s in summaries))
    if code == 1:
        raise AirflowException("; ".join(f"{s.view}: {s.error}" for s in summaries if s.error))
    # 3: committed with some rows rejected; `otc rejects --run ID` shows them.


def check_freshness() -> None:
    """Fail the task when a view is past its error threshold or its last run failed."""
    import otc_pipeline

    views = otc_pipeline.check_freshness(error_after="30h")
    failing = [view for view in views if view.failing]
    if failing:
        raise AirflowException("; ".join(view.line() for view in failing))


with DAG(
    dag_id="otc_load",
    schedule="15 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # Never two loads at once (a second would be refused with 75 anyway).
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=15)},
    tags=["otc"],
) as dag:
    otc_load_all = BashOperator(
        task_id="otc_load_all",
        bash_command="otc load all",
        env={"OTC_LOG_FORMAT": "json"},
        append_env=True,
        skip_on_exit_code=EX_TEMPFAIL,
    )
    otc_load_timesheets = PythonOperator(
        task_id="otc_load_timesheets",
        python_callable=load_timesheets,
    )
    otc_check = PythonOperator(
        task_id="otc_check_freshness",
        python_callable=check_freshness,
        # Check even when a load was skipped or failed: that is when it matters.
        trigger_rule="all_done",
    )
    otc_load_all >> otc_load_timesheets >> otc_check
