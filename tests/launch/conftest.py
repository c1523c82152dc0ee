"""Daemons for the launch tests: a one-node SLURM and two ssh "nodes" on loopback, started once per module and
stopped by pid. Skipped, with the reason, only where this machine cannot run them."""
from __future__ import annotations

import pytest

from tests.launch.cluster import SLURM_PROGRAMS, SSH_PROGRAMS, Slurm, SshNodes, cannot_run_daemons


@pytest.fixture(scope="module")
def ssh_nodes(tmp_path_factory):
    reason = cannot_run_daemons(SSH_PROGRAMS)
    if reason:
        pytest.skip(reason)
    nodes = SshNodes(tmp_path_factory.mktemp("ssh")).start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = cannot_run_daemons(SLURM_PROGRAMS)
    if reason:
        pytest.skip(reason)
    cluster = Slurm(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()
