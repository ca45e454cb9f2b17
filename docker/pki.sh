#!/bin/sh
# The compose demo's init step: a shared root, a CA per mesh, and the two proxies' identities,
# written where the configs in docker/config expect them.
set -eu
meshgate pki root --out /pki/root
meshgate pki intermediate --root /pki/root --trust-domain example-target.com --out /pki/example-target.com
meshgate pki intermediate --root /pki/root --trust-domain example.com --out /pki/example.com
meshgate pki workload --ca /pki/example-target.com --out /pki/target \
  --spiffe-id spiffe://example-target.com/ns/istio-system/sa/multi-mesh-gateway \
  --dns '*.example-target.com'
meshgate pki workload --ca /pki/example.com --out /pki/source \
  --spiffe-id spiffe://example.com/ns/default/sa/sleep
chown -R 65532:65532 /pki
