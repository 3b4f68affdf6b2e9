"""Synthetic verifiable tasks. `dag`: path-finding in a random DAG with many valid paths."""

from passk_companion.model.tasks.dag import DagTask, make_dag_task

__all__ = ["DagTask", "make_dag_task"]
