#!/usr/bin/env bash
# Checks the Kubernetes manifests under deploy/kubernetes, for every overlay:
#   1. renders it with `kubectl kustomize`;
#   2. validates every object against the Kubernetes OpenAPI schemas, strictly (an unknown
#      field is an error), with kubernetes-validate (PyPI), for each of $KUBE_VERSIONS;
#   3. checks the pods against meshgate's configuration: the config directory is a ConfigMap
#      volume mounted without subPath (so the `..data` swap reaches meshgate's reload), every
#      mounted file is readable by the container's uid (mode, fsGroup), the container is
#      hardened (non-root, read-only root, no capabilities, RuntimeDefault seccomp), the
#      admin listener is on loopback, the probes and the Prometheus port are the
#      `spec.admin.probes` port, the identity files are in a mounted Secret, every listener
#      on the pod network is a containerPort, every Service targetPort is one, and
#      terminationGracePeriodSeconds outlasts the preStop sleep plus --drain-timeout;
#   4. runs `meshgate check` on the files of each rendered ConfigMap, with a throwaway
#      identity (made by `meshgate pki` for the pod's namespace and service account) where
#      the Secret would be mounted: errors and warnings both fail.
# Exits non-zero on any failure.
#
#   deploy/kubernetes/validate.sh [OVERLAY_DIR...]      (default: every overlay)
#
# Environment: MESHGATE (the binary; default target/debug/meshgate), KUBE_VERSIONS (default
# "1.30.0 1.37.0": the oldest with native sidecars and preStop sleep on by default, and the
# newest kubernetes-validate knows), MESHGATE_CHECK_ARGS (more `meshgate check` arguments,
# such as `--suppress MG0202`; the --suppress arguments of the container's `run` are passed
# on already), MESHGATE_VALIDATE_CACHE (where the venv goes; default
# ${XDG_CACHE_HOME:-~/.cache}/meshgate-validate). Needs kubectl and python3; the first run
# installs kubernetes-validate into a venv there (PyPI); later runs work offline.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
MESHGATE=${MESHGATE:-$repo/target/debug/meshgate}
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.30.0 1.37.0"}
KV_VERSION=1.37.0
cache=${MESHGATE_VALIDATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshgate-validate}
venv=$cache/kubernetes-validate-$KV_VERSION

die() { echo "validate.sh: $*" >&2; exit 2; }
command -v kubectl >/dev/null || die "kubectl not found"
command -v python3 >/dev/null || die "python3 not found"
[[ -x $MESHGATE ]] || die "no meshgate binary at $MESHGATE (cargo build, or set MESHGATE)"

# kubernetes-validate, pinned (its schemas come with it), in a venv of its own. The marker is
# written last, so a broken install is started again rather than used.
if [[ ! -f $venv/.installed ]]; then
    echo "installing kubernetes-validate $KV_VERSION into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
    touch "$venv/.installed"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/meshgate-validate.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if [[ $# -gt 0 ]]; then
    overlays=("$@")
else
    overlays=()
    for d in "$here"/overlays/*/; do overlays+=("${d%/}"); done
fi

# An overlay's problems so far go to $tmp/NAME/problems (no associative arrays: bash 3 too).
failed=0
rendered=()
for overlay in "${overlays[@]}"; do
    name=$(basename "$overlay")
    mkdir -p "$tmp/$name"
    if kubectl kustomize "$overlay" >"$tmp/$name/rendered.yaml" 2>"$tmp/$name/kustomize.err"; then
        rendered+=("$tmp/$name/rendered.yaml")
    else
        rm -f "$tmp/$name/rendered.yaml"
        { echo "kubectl kustomize:"; cat "$tmp/$name/kustomize.err"; } >>"$tmp/$name/problems"
    fi
done
# One kubernetes-validate run per version for all overlays (its start-up is most of its time).
for v in $KUBE_VERSIONS; do
    [[ ${#rendered[@]} -gt 0 ]] || break
    if ! "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$v" \
        "${rendered[@]}" >"$tmp/schema-$v.log" 2>&1; then
        for f in "${rendered[@]}"; do
            name=$(basename "$(dirname "$f")")
            if grep -F "$f" "$tmp/schema-$v.log" | grep -qv '^INFO'; then
                { echo "schemas $v (strict):"; grep -F "$f" "$tmp/schema-$v.log"; } >>"$tmp/$name/problems"
            fi
        done
        if ! grep -q "$tmp/" "$tmp/schema-$v.log"; then
            cat "$tmp/schema-$v.log" >&2; die "kubernetes-validate $v failed"
        fi
    fi
done

for overlay in "${overlays[@]}"; do
    name=$(basename "$overlay")
    out=$tmp/$name
    echo "== $name"
    if [[ -s $out/problems ]]; then
        sed 's/^/   /' "$out/problems"
    fi
    if [[ ! -s $out/rendered.yaml ]]; then
        echo "FAIL $name"
        failed=1
        continue
    fi
    ok=1
    if [[ -s $out/problems ]]; then
        ok=0
    else
        echo "   schemas $KUBE_VERSIONS (strict): ok"
    fi
    if ! MESHGATE=$MESHGATE "$venv/bin/python" - "$out/rendered.yaml" "$out" \
        ${MESHGATE_CHECK_ARGS:-} <<'PY'
import json, os, re, subprocess, sys, yaml

rendered, out, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
meshgate = os.environ["MESHGATE"]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
problems = []

def problem(where, text):
    problems.append(f"{where}: {text}")

def flag_value(args, long, short):
    """Values of `--long=V`, `--long V` and `-s V` in a container's args."""
    found, i = [], 0
    while i < len(args):
        a = str(args[i])
        if a.startswith(long + "="):
            found.append(a.split("=", 1)[1])
        elif a in (long, short) and i + 1 < len(args):
            found.append(str(args[i + 1])); i += 1
        i += 1
    return found

def port_of(container, port):
    """A probe's or Service's port (a name or a number) as a number of this container."""
    for p in container.get("ports") or []:
        if port in (p.get("name"), p.get("containerPort")):
            return p.get("containerPort")
    return None

def is_loopback(addr):
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host == "::1" or host.startswith("127.")

configmaps = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d
              for d in docs if d.get("kind") == "ConfigMap"}
workloads = [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")]
services = [d for d in docs if d.get("kind") == "Service"]
checked = 0

for w in workloads:
    ns = w["metadata"].get("namespace", "default")
    pod = w["spec"]["template"]
    spec = pod["spec"]
    psc = spec.get("securityContext") or {}
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    annotations = pod.get("metadata", {}).get("annotations") or {}
    grace = spec.get("terminationGracePeriodSeconds", 30)
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        args = [str(a) for a in c.get("args") or c.get("command") or []]
        if "run" not in args:
            continue
        configs = flag_value(args, "--config", "-c")
        if not configs:
            continue
        where = f"{w['kind']} {ns}/{w['metadata']['name']} container {c['name']}"
        csc = c.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        # Hardening.
        if not csc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            problem(where, "runAsNonRoot is not true")
        if uid in (None, 0):
            problem(where, "no non-root runAsUser (the image's USER is not checked here)")
        if csc.get("readOnlyRootFilesystem") is not True:
            problem(where, "readOnlyRootFilesystem is not true")
        if csc.get("allowPrivilegeEscalation") is not False:
            problem(where, "allowPrivilegeEscalation is not false")
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            problem(where, "capabilities.drop does not include ALL")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problem(where, f"seccompProfile is {seccomp}, not RuntimeDefault")
        # Every mounted ConfigMap or Secret file readable by the container's uid. Kubernetes
        # makes them root-owned, of group fsGroup when the pod sets one.
        fs_group = psc.get("fsGroup")
        mounts = c.get("volumeMounts") or []
        secret_dirs, config_dirs = {}, {}
        for m in mounts:
            v = volumes.get(m["name"])
            if v is None:
                problem(where, f"volumeMount {m['name']} names no volume")
                continue
            src = v.get("secret") or v.get("configMap")
            if src is None:
                continue
            modes = [src.get("defaultMode", 0o644)] + [i["mode"] for i in src.get("items") or [] if "mode" in i]
            for mode in modes:
                if uid not in (None, 0) and not (mode & 0o004 or (mode & 0o040 and fs_group is not None)):
                    problem(where, f"volume {m['name']}: mode {mode:#o} with "
                            f"{'fsGroup ' + str(fs_group) if fs_group is not None else 'no fsGroup'}: "
                            f"uid {uid} cannot read its files (use fsGroup and defaultMode 0440)")
            if "secret" in v:
                secret_dirs[m["mountPath"].rstrip("/")] = v["secret"].get("secretName")
            else:
                config_dirs[m["mountPath"].rstrip("/")] = (m, v["configMap"]["name"])
        # Grace period: preStop sleep, then SIGTERM and --drain-timeout (default 5 s).
        drain = int((flag_value(args, "--drain-timeout", "--drain-timeout") or ["5"])[-1])
        pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
        if grace <= pre + drain:
            problem(where, f"terminationGracePeriodSeconds {grace} does not outlast preStop "
                    f"sleep {pre} s + --drain-timeout {drain} s: drains get SIGKILLed")
        for path in configs:
            path = path.rstrip("/")
            if path not in config_dirs:
                problem(where, f"--config {path} is not the mountPath of a ConfigMap volume")
                continue
            mount, cm_name = config_dirs[path]
            if mount.get("subPath") or mount.get("subPathExpr"):
                problem(where, f"{path} is mounted with subPath: Kubernetes never updates it, "
                        "so meshgate never reloads it")
            cm = configmaps.get((w["metadata"].get("namespace"), cm_name))
            if cm is None:
                problem(where, f"ConfigMap {cm_name} is not in this overlay")
                continue
            # The configuration, with the Secret mount paths pointing at a throwaway identity.
            checked += 1
            base = os.path.join(out, f"{w['metadata']['name']}-{c['name']}")
            cdir = os.path.join(base, "config")
            os.makedirs(cdir, exist_ok=True)
            data = cm.get("data") or {}
            texts = dict(data)
            for sdir in secret_dirs:
                local = os.path.join(base, "secret" + sdir)
                os.makedirs(local, exist_ok=True)
                for k in texts:
                    texts[k] = texts[k].replace(sdir + "/", local + "/")
            for k, t in texts.items():
                open(os.path.join(cdir, k), "w").write(t)
            # What the configuration says, read from the original (unrewritten) files.
            gw, trust_domain = None, "cluster.local"
            for k, t in data.items():
                if not k.endswith((".yaml", ".yml", ".json")):
                    continue
                for d in yaml.safe_load_all(t):
                    if not isinstance(d, dict):
                        continue
                    items = d.get("items", []) if d.get("kind") == "List" else [d]
                    for d in items:
                        if d.get("kind") == "MeshGateway":
                            gw = d
                        elif d.get("kind") == "Istio":
                            trust_domain = (d.get("spec", {}).get("config") or {}).get("trustDomain", trust_domain)
                        elif d.get("kind") == "IstioOperator":
                            trust_domain = (d.get("spec", {}).get("meshConfig") or {}).get("trustDomain", trust_domain)
            if gw is None:
                problem(where, f"ConfigMap {cm_name} holds no MeshGateway")
                continue
            gspec = gw.get("spec") or {}
            admin = gspec.get("admin") or {}
            if "address" in admin and not is_loopback(admin["address"]):
                problem(where, f"spec.admin.address {admin['address']} is not loopback: "
                        "/config_dump and /certs would be served to the pod network")
            probes = admin.get("probes")
            probe_port = int(probes.rsplit(":", 1)[1]) if probes else None
            for kind, path_ in (("readinessProbe", "/ready"), ("livenessProbe", "/healthz"),
                                ("startupProbe", None)):
                p = c.get(kind)
                if p is None:
                    if kind != "startupProbe":
                        problem(where, f"no {kind}")
                    continue
                get = p.get("httpGet")
                if get is None:
                    problem(where, f"{kind} is not httpGet")
                    continue
                if path_ and get.get("path") != path_:
                    problem(where, f"{kind} path {get.get('path')}, not {path_}")
                port = port_of(c, get.get("port")) if isinstance(get.get("port"), str) else get.get("port")
                if probe_port is None or port != probe_port:
                    problem(where, f"{kind} port {get.get('port')} ({port}) is not "
                            f"spec.admin.probes ({probes}): the kubelet cannot reach it")
            if annotations.get("prometheus.io/scrape") == "true" and \
                    str(annotations.get("prometheus.io/port")) != str(probe_port):
                problem(where, f"prometheus.io/port {annotations.get('prometheus.io/port')} "
                        f"is not the spec.admin.probes port {probe_port}")
            identity = gspec.get("identity") or {}
            for key in ("certChain", "privateKey", "rootCerts", "crl"):
                f = identity.get(key)
                if f is not None and os.path.dirname(f).rstrip("/") not in secret_dirs:
                    problem(where, f"spec.identity.{key} {f} is not in a mounted Secret "
                            f"({', '.join(secret_dirs) or 'none'})")
            # A throwaway identity of this pod: spiffe://TD/ns/NS/sa/SA.
            sa = spec.get("serviceAccountName", "default")
            spiffe = f"spiffe://{trust_domain}/ns/{ns}/sa/{sa}"
            pki = os.path.join(base, "pki")
            def run(*a):
                r = subprocess.run([meshgate, *a], capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"{where}: meshgate {' '.join(a)}: {r.stderr.strip()}")
            run("pki", "root", "--out", f"{pki}/root")
            run("pki", "intermediate", "--root", f"{pki}/root", "--trust-domain", trust_domain,
                "--out", f"{pki}/ca")
            run("pki", "workload", "--ca", f"{pki}/ca", "--spiffe-id", spiffe, "--out", f"{pki}/id")
            for key, made in (("certChain", "cert-chain.pem"), ("privateKey", "key.pem"),
                              ("rootCerts", "root-cert.pem")):
                f = identity.get(key)
                if f and os.path.dirname(f).rstrip("/") in secret_dirs:
                    dst = os.path.join(base, "secret" + f)
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    with open(os.path.join(pki, "id", made), "rb") as src:
                        open(dst, "wb").write(src.read())
            # meshgate check: text for its summary, JSON for the verdict.
            # The warnings the container's `run` suppresses are suppressed here too.
            extra_c = extra + [f"--suppress={x}" for x in flag_value(args, "--suppress", "--suppress")]
            r = subprocess.run([meshgate, "check", "-c", cdir, *extra_c], capture_output=True, text=True)
            summary = r.stdout + r.stderr
            rj = subprocess.run([meshgate, "check", "-c", cdir, "--output", "json", *extra_c],
                                capture_output=True, text=True)
            try:
                verdict = json.loads(rj.stdout)
            except ValueError:
                problem(where, f"meshgate check --output json: {rj.stdout[:200]} {rj.stderr[:500]}")
                continue
            for e in verdict.get("errors", []):
                problem(where, f"meshgate check: error: {e.get('text') or e.get('message')}")
            for wn in verdict.get("warnings", []):
                problem(where, f"meshgate check: warning [{wn['code']}] {wn.get('resource')}: "
                        f"{wn.get('field') or ''} {wn['message']}")
            if not verdict.get("ok") and not verdict.get("errors"):
                problem(where, f"meshgate check failed: {summary.strip()[-500:]}")
            print(f"   meshgate check {cm_name} as {spiffe}: "
                  f"{'ok' if verdict.get('ok') else 'FAILED'}, {len(verdict.get('warnings', []))} warning(s)")
            # Listeners on the pod network must be container ports.
            ports = {p.get("containerPort") for p in c.get("ports") or []}
            for m in re.finditer(r"^listener (\S+) port \d+ on (\S+):(\d+):", summary, re.M):
                if not is_loopback(m.group(2)) and int(m.group(3)) not in ports:
                    problem(where, f"listener {m.group(1)} on {m.group(2)}:{m.group(3)} is not a containerPort")

# Every Service port reaches a container port of the pods it selects.
for s in services:
    sel = s["spec"].get("selector") or {}
    where = f"Service {s['metadata'].get('namespace')}/{s['metadata']['name']}"
    pods = [w for w in workloads
            if w["metadata"].get("namespace") == s["metadata"].get("namespace")
            and sel and all((w["spec"]["template"]["metadata"].get("labels") or {}).get(k) == v
                            for k, v in sel.items())]
    if not pods:
        problem(where, f"selector {sel} matches no pod template here")
    for p in s["spec"].get("ports") or []:
        target = p.get("targetPort", p.get("port"))
        if pods and not any(port_of(c, target) for w in pods
                            for c in (w["spec"]["template"]["spec"].get("initContainers") or [])
                            + w["spec"]["template"]["spec"]["containers"]):
            problem(where, f"port {p.get('name')}: targetPort {target} is no containerPort")

if checked == 0:
    problem("overlay", "no meshgate container with a ConfigMap --config found")
for p in problems:
    print(f"   {p}")
print(f"   manifest/config checks: {'ok' if not problems else 'FAILED'}")
sys.exit(1 if problems else 0)
PY
    then
        ok=0
    fi
    if [[ $ok == 1 ]]; then echo "ok   $name"; else echo "FAIL $name"; failed=1; fi
done
exit $failed
