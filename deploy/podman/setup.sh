#!/usr/bin/env bash
# Host set-up for podman on a Debian machine without a container daemon (root, no systemd):
# installs podman, runc, catatonit (the pause process of `podman kube play` pods), the CNI
# plugins and iptables (its bridge network and published ports) and debootstrap (for
# `make base-image`) from Debian's packages, and writes the engine settings this machine kind
# needs. Idempotent; `make podman` runs it.
set -euo pipefail

packages=(podman runc catatonit debootstrap)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]} from Debian's packages"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" \
        containernetworking-plugins iptables
fi

# crun (podman's default) is not installed; runc is. No systemd here: cgroupfs and a file
# events log. The ulimits podman sets by default (nofile 1048576, nproc in the millions) are
# refused here with "error setting rlimit ... operation not permitted"; these are accepted.
# (A `--ulimit` given on the command line replaces this whole list, so give both there.)
mkdir -p /etc/containers/containers.conf.d
cat > /etc/containers/containers.conf.d/heimdall.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=16384:16384"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
podman --version
