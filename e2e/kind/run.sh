#!/usr/bin/env bash
# `just e2e-kind`: a kind cluster (one control plane, two workers) with the
# agent's image loaded, the acceptance suite run against it, and the cluster
# deleted, on failure and on Ctrl-C too. Exits 3, the suite's "unavailable"
# code, where docker or kind is missing or no Docker engine answers.
#
# Not run on the project's machines (no Docker engine there): written to
# kind's documented interface, and checked only as far as its refusals.
set -euo pipefail
cd "$(dirname "$0")/../.."

unavailable() {
  echo "e2e-kind: unavailable: $*" >&2
  echo "nothing was checked; exit code 3" >&2
  exit 3
}

missing=()
for tool in docker kind; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  unavailable "${missing[*]} not on PATH. kind needs both and a Docker engine; against a cluster" \
    "you already have, run \`just e2e-kube --kubeconfig FILE\`"
fi
docker info >/dev/null 2>&1 ||
  unavailable "no Docker engine answers \`docker info\`; start it, or run \`just e2e-kube\` against an existing cluster"

archive=target/image/reflektor.oci.tar
[ -f "$archive" ] || { echo "e2e-kind: $archive is missing; run \`just image\`" >&2; exit 2; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image="ghcr.io/reflektor/reflektor:${version}"

name="reflektor-e2e-$$"
registry="$name-registry"
work=$(mktemp -d)
cleanup() {
  echo "e2e-kind: deleting cluster $name and registry $registry" >&2
  kind delete cluster --name "$name" >/dev/null 2>&1 || true
  docker rm -f "$registry" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# What the agent needs of containerd, as Spegel's e2e sets it: hosts.toml
# under config_path, and layers kept after unpacking.
cat >"$work/kind.yaml" <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
- |-
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    discard_unpacked_layers = false
nodes:
- role: control-plane
- role: worker
- role: worker
YAML

kind create cluster --name "$name" --config "$work/kind.yaml" \
  --kubeconfig "$work/kubeconfig" --wait 180s
# The archive's image is named $image; pods pull it IfNotPresent, so the
# loaded copy is what runs.
kind load image-archive "$archive" --name "$name"

# A local registry for the suite's test image, as kind's documentation sets
# one up: localhost:5001 from this machine, and on every node a certs.d
# entry sending localhost:5001 to the registry's container.
docker run -d --restart=no --name "$registry" -p "127.0.0.1:5001:5000" registry:2 >/dev/null
docker network connect kind "$registry"
for node in $(kind get nodes --name "$name"); do
  docker exec "$node" mkdir -p /etc/containerd/certs.d/localhost:5001
  printf '[host."http://%s:5000"]\n' "$registry" |
    docker exec -i "$node" tee /etc/containerd/certs.d/localhost:5001/hosts.toml >/dev/null
done
status=0
# kind's nodes are containers: the suite reads their hosts.toml through
# `docker exec`.
cargo run -q -p reflektor-e2e -- kube --kubeconfig "$work/kubeconfig" --image "$image" \
  --registry http://localhost:5001 --node-shell "docker exec -i {node}" \
  --out target/e2e-kind "$@" || status=$?
exit "$status"
