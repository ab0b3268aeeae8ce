# The two commands that matter: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_TOOLS := libiscsi-bin qemu-utils qemu-block-extra tgt fio libnbd-bin nbdkit iproute2 resource-agents arping
# PostMark through nbdfuse + fuse2fs (`python -m bench replication`; mkfs.ext4 is e2fsprogs)
DEBIAN_TOOLS += postmark fuse2fs e2fsprogs
# NBD over TLS (tests/nbd/test_tls*.py): the tests make their CA and certificates with openssl
DEBIAN_TOOLS += openssl
# HA cluster: links cut with nftables in a namespace (tests/cluster/test_multihost_*.py);
# keepalived (VRRPv3) as the failover baseline (`python -m bench failover`)
DEBIAN_TOOLS += nftables keepalived
# STONITH with Debian's fence agents run unchanged (fence_dummy, fence_heuristics_ping, which
# needs /bin/ping): tests/cluster/test_fencing.py, test_multihost_fence_agents.py
DEBIAN_TOOLS += fence-agents iputils-ping
# the dashboard rendered in headless Chromium (tests/web)
DEBIAN_TOOLS += chromium
# PostgreSQL 15 (Debian 12's `postgresql`) failed over on a replicated volume by the stock OCF
# pgsql agent (resource-agents, above): tests/cluster/test_multihost_postgres.py; kmod
# (modprobe) for the stock Filesystem agent on an attached volume (test_agents_attach.py)
DEBIAN_TOOLS += postgresql kmod
# nbdfuse (tests/nbd): its own package in newer Debian; in Debian 12 only a name that
# libnbd-bin provides (dpkg -s would never see it installed), so list it only where it is real.
DEBIAN_TOOLS += $(shell apt-cache show nbdfuse 2>/dev/null | grep -q '^Package: nbdfuse' && echo nbdfuse)

.PHONY: demo test torture torture-cluster bench bench-quick bench-venv lint venv run-venv tools man clean

# The venv with ophiura and what it needs to run (its dependencies and the `fast` extra,
# uvloop): all that `make demo` installs.
$(BIN)/ophiura: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || { \
	  rm -rf $(VENV); [ "$$(id -u)" = 0 ] && apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null && \
	  $(PY) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[fast]'
	touch $@

# The test and lint tools on top (the `dev` extra: pytest, hypothesis, ruff, matplotlib,
# prometheus-client), for test, lint, torture and bench; redone when pyproject.toml changes.
$(VENV)/.dev-installed: $(BIN)/ophiura
	$(BIN)/pip install -q -e '.[dev,fast]'
	touch $@

run-venv: $(BIN)/ophiura

venv: $(VENV)/.dev-installed

# Debian test tools: installed when run as root, otherwise the tests that need them skip.
tools:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; for p in $(DEBIAN_TOOLS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	  fi; \
	else echo "not root: not installing Debian test tools ($(DEBIAN_TOOLS))"; fi

# As root the demo puts nodes in network namespaces with a floating IP: it needs `ip` and
# arping (installed here if missing); as another user it runs on 127.0.0.1 and says what it left out.
DEMO_TOOLS := iproute2 arping

demo: run-venv
	@if [ "$$(id -u)" = 0 ] && ! { command -v ip && command -v arping; } >/dev/null; then \
	  echo "installing: $(DEMO_TOOLS)"; apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEMO_TOOLS) >/dev/null || \
	  echo "could not install $(DEMO_TOOLS): the demo runs on 127.0.0.1"; fi
	$(BIN)/ophiura demo $(DEMO_ARGS)

test: venv tools
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest tests

# Jepsen-style fault injection against real SE/HE processes (docs/reliability.md): several
# seeds (7), 5 minutes each, a fault every ~0.45 s (overlapping; 2,000+ storage faults in all); one
# line per run, JSON in torture-results/. Exit 1 if anything was lost, stale or diverged.
# Then the cluster mode (as root: the demo's three nodes in namespaces): 5 seeds of 200 s, about
# 25 node faults each (crash, pause, heartbeat link cuts, partition, restart), checked from the
# app's ledger; without root it says it is unavailable and is skipped.
TORTURE_SEED ?= 1
TORTURE_RUNS ?= 7
TORTURE_DURATION ?= 300
TORTURE_CLUSTER_RUNS ?= 5
TORTURE_CLUSTER_DURATION ?= 200
torture: venv
	@rc=0; \
	$(BIN)/ophiura torture --seed $(TORTURE_SEED) --runs $(TORTURE_RUNS) --duration $(TORTURE_DURATION) --mean-gap 0.45 --heal-timeout 90 $(TORTURE_ARGS) || rc=1; \
	$(MAKE) --no-print-directory torture-cluster || rc=1; \
	exit $$rc

torture-cluster: venv
	@if [ "$$(id -u)" = 0 ] && ! { command -v ip && command -v arping && command -v nft; } >/dev/null; then \
	  echo "installing: $(DEMO_TOOLS) nftables"; apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEMO_TOOLS) nftables >/dev/null; fi
	@if [ "$$(id -u)" = 0 ]; then \
	  $(BIN)/ophiura torture --mode cluster --seed $(TORTURE_SEED) --runs $(TORTURE_CLUSTER_RUNS) --duration $(TORTURE_CLUSTER_DURATION) $(TORTURE_CLUSTER_ARGS); \
	else echo "not root: torture --mode cluster unavailable (it needs network namespaces)"; fi

# Both suites: the SCSI target against tgtd, then StarFish replicated volumes against the direct
# target (plots need matplotlib: the `bench` extra). `make bench-quick` is the short pass.
bench-venv: venv
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install -q -e '.[dev,fast,bench]'

bench: bench-venv tools
	$(BIN)/python -m bench
	$(BIN)/python -m bench replication --plots docs/img
	$(BIN)/python -m bench failover

bench-quick: bench-venv tools
	$(BIN)/python -m bench --quick
	$(BIN)/python -m bench replication --quick
	$(BIN)/python -m bench failover --quick

# Man pages from the CLI's help, one per command (ophiura.1, ophiura-target.1, ...):
# `man -l build/man/ophiura-target.1`, or MANPATH=build: man ophiura-target (docs/operations.md).
MANDIR ?= build/man1
man: run-venv
	$(BIN)/python -m ophiura.manpages $(MANDIR)

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
