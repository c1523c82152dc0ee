"""Daemons for the launch tests: a one-node SLURM and two ssh "nodes" on loopback, started once per module and
stopped by pid. Skipped, with the reason, only where this machine cannot run them."""
from __future__ import annotations

import pytest

from tests.launch.cluster import SLURM_PROGRAMS, SSH_PROGRAMS, Slurm, SshNodes, cannot_run_daemons


def started(daemons_cls, programs, folder):
    reason = cannot_run_daemons(programs)
    if reason:
        pytest.skip(reason)
    daemons = daemons_cls(folder).start()
    yield daemons
    daemons.stop()


@pytest.fixture(scope="module")
def ssh_nodes(tmp_path_factory):
    yield from started(SshNodes, SSH_PROGRAMS, tmp_path_factory.mktemp("ssh"))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    yield from started(Slurm, SLURM_PROGRAMS, tmp_path_factory.mktemp("slurm"))
