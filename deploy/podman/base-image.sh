#!/usr/bin/env bash
# Builds the image the Heimdall Bento is built on, localhost/heimdall-base:bookworm, from Debian
# packages with debootstrap (no image registry is needed): Debian bookworm with Python 3.11 in a
# venv at /opt/python, first on PATH, so the Bento's pip installs there and not into the system
# Python (which Debian marks externally managed). The host's CA certificates are copied in, so
# HTTPS from inside an image build trusts what the host trusts. `make base-image` runs it;
# nothing is done when the image exists (FORCE=1 rebuilds).
set -euo pipefail

image=${HEIMDALL_BASE_IMAGE:-localhost/heimdall-base:bookworm}
engine=${ENGINE:-podman}
if [[ -z ${FORCE:-} ]] && "$engine" image exists "$image" 2>/dev/null; then
    echo "$image already built (FORCE=1 to rebuild)"
    exit 0
fi

# The Debian mirror this host installs from (deb822 or one-line sources), so the image gets
# the same packages the host can reach.
mirror=$(
    cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
        awk '$1 == "URIs:" || $1 == "deb" { print $2 }' | grep -v -- '-security' | head -n1 || true
)
: "${mirror:?no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d}"

root=$(mktemp -d /var/tmp/heimdall-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm from the host's Debian mirror into $root (a few minutes)"
debootstrap --variant=minbase --include=python3.11,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" | grep -E '^I: (Retrieving|Validating|Extracting|Installing|Configuring|Base)' \
    | awk 'NR % 20 == 1 || /Base/'
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
chroot "$root" /usr/bin/python3.11 -m venv /opt/python
ln -sf python3.11 "$root/opt/python/bin/python3"
# Image size: no apt lists, caches or docs in the base.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* "$root"/usr/share/man/*

echo "importing the root file system as $image"
tar -C "$root" -c . | "$engine" import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' \
    - "$image"
"$engine" image ls "$image"
