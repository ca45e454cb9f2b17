#!/bin/sh
# The compose demo's init step, run as root in a container that mounts one volume per directory:
#   /pki/root                 the shared root CA                 (this container only)
#   /pki/example-target.com   the target mesh's CA (cacerts)     (this container only)
#   /pki/example.com          the source mesh's CA (cacerts)     (this container only)
#   /pki/target               the target gateway's identity      -> target-gateway, read-only
#   /pki/source               the source proxy's identity        -> source-proxy, read-only
#   /pki/callers              identities to call the gateway with (curl, docker/test.sh)
# The root and the two mesh CAs are made once and reused on every later start (remove the
# volumes, `docker compose down -v`, to start over); the workload certificates are valid for
# 24 hours, so they are issued anew on every start.
set -eu
umask 077

# A CA's key is only ever readable by root, in a volume no proxy mounts.
made_root=
if [ -s /pki/root/root-key.pem ] && [ -s /pki/root/root-cert.pem ]; then
  echo "pki: reusing the root CA in /pki/root"
else
  meshgate pki root --out /pki/root
  made_root=1
fi
meshgate pki inspect /pki/root/root-cert.pem | grep -E '^(subject|validity|cert sha256):'

for td in example-target.com example.com; do
  if [ -z "$made_root" ] && [ -s "/pki/$td/ca-key.pem" ] && [ -s "/pki/$td/cert-chain.pem" ]; then
    echo "pki: reusing the $td mesh CA"
  else
    meshgate pki intermediate --root /pki/root --trust-domain "$td" --out "/pki/$td"
  fi
done

# A workload identity, issued into a scratch directory and renamed into place file by file, so
# that a proxy already running (a second `up`, or `run pki` to renew) never reads a half-written
# or root-only file.
workload() { # owner:mode ca out spiffe-id [extra args]
  owner=${1%:*} mode=${1#*:} ca=$2 out=$3 id=$4
  shift 4
  mkdir -p "$out"
  rm -rf "$out/.new"
  meshgate pki workload --ca "$ca" --out "$out/.new" --spiffe-id "$id" "$@"
  chown "$owner:$owner" "$out/.new"/*.pem
  chmod "$mode" "$out/.new"/*.pem
  mv -f "$out/.new"/*.pem "$out/"
  rmdir "$out/.new"
}

# The proxies run as 65532 and read only their own identity.
workload 65532:0400 /pki/example-target.com /pki/target \
  spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway --dns '*.example-target.com'
workload 65532:0400 /pki/example.com /pki/source spiffe://example.com/ns/default/sa/sleep
chown 65532:65532 /pki/target /pki/source
chmod 0500 /pki/target /pki/source

# Callers of the target gateway, as in `meshgate demo`, for curl on the host (docker/test.sh): a
# workload of the target mesh, a legacy workload still named in Istio's default trust domain
# (cluster.local) by the target mesh's CA, and one from a root nobody trusts.
workload 0:0644 /pki/example-target.com /pki/callers/target-curl \
  spiffe://example-target.com/ns/default/sa/curl
workload 0:0644 /pki/example-target.com /pki/callers/legacy \
  spiffe://cluster.local/ns/default/sa/legacy --allow-foreign-trust-domain
if ! [ -s /pki/callers/untrusted-ca/ca-key.pem ]; then
  meshgate pki root --out /pki/callers/untrusted-root --common-name 'an unrelated root'
  meshgate pki intermediate --root /pki/callers/untrusted-root --trust-domain example.com \
    --out /pki/callers/untrusted-ca
fi
workload 0:0644 /pki/callers/untrusted-ca /pki/callers/untrusted \
  spiffe://example.com/ns/default/sa/intruder
chmod 0755 /pki/callers /pki/callers/*

chmod 0700 /pki/root /pki/example-target.com /pki/example.com
