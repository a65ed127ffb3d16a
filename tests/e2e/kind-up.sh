#!/usr/bin/env bash
# Create the e2e kind cluster, install gVisor and Calico, build and load the images, install the chart.
# Needs: docker, kind, kubectl, helm, curl, and internet access (Calico manifest, gVisor release).
# Usage: tests/e2e/kind-up.sh            (idempotent: reuses an existing cluster of the same name)
# Env:   KIND_CLUSTER (tako-vm-e2e), CALICO_VERSION (v3.28.2), GVISOR_RELEASE (latest),
#        TAKO_E2E_API_KEY (generated), TAKO_E2E_NAMESPACE (tako-system)
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${KIND_CLUSTER:-tako-vm-e2e}
CALICO_VERSION=${CALICO_VERSION:-v3.28.2}
GVISOR_RELEASE=${GVISOR_RELEASE:-latest}
NAMESPACE=${TAKO_E2E_NAMESPACE:-tako-system}
API_KEY=${TAKO_E2E_API_KEY:-e2e-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}
TAG=e2e

for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "kind-up: $tool is required" >&2; exit 2; }
done

step() { echo "==> $*"; }

if ! kind get clusters | grep -qx "$CLUSTER"; then
  step "create kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 0s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

step "install Calico $CALICO_VERSION (NetworkPolicy enforcement)"
kubectl apply --server-side -f "https://raw.githubusercontent.com/projectcalico/calico/$CALICO_VERSION/manifests/calico.yaml" >/dev/null
kubectl -n kube-system rollout status daemonset/calico-node --timeout=300s
kubectl wait --for=condition=Ready nodes --all --timeout=300s

step "install gVisor (runsc + containerd-shim-runsc-v1) on every node"
for node in $(kind get nodes --name "$CLUSTER"); do
  docker exec "$node" bash -euc "
    if ! command -v runsc >/dev/null; then
      arch=\$(uname -m)
      url=https://storage.googleapis.com/gvisor/releases/release/$GVISOR_RELEASE/\$arch
      cd /tmp
      for f in runsc runsc.sha512 containerd-shim-runsc-v1 containerd-shim-runsc-v1.sha512; do
        curl -fsSLO \$url/\$f
      done
      sha512sum -c runsc.sha512 -c containerd-shim-runsc-v1.sha512
      install -m 0755 runsc containerd-shim-runsc-v1 /usr/local/bin/
      systemctl restart containerd
    fi"
done

step "build and load images"
docker build -q -f docker/operator.Dockerfile -t "tako-vm-operator:$TAG" .
docker build -q -f docker/shim.Dockerfile -t "tako-vm-shim:$TAG" .
kind load docker-image --name "$CLUSTER" "tako-vm-operator:$TAG" "tako-vm-shim:$TAG"

step "install the chart"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
helm upgrade --install tako charts/tako-vm --namespace "$NAMESPACE" --wait --timeout 5m \
  --set runtimeClass.create=true \
  --set operator.image.repository=tako-vm-operator --set operator.image.tag="$TAG" \
  --set operator.image.pullPolicy=Never \
  --set shim.image.repository=tako-vm-shim --set shim.image.tag="$TAG" \
  --set shim.image.pullPolicy=Never \
  --set apiKeys.value="$API_KEY"
echo "$API_KEY" > "${TAKO_E2E_STATE:-/tmp}/tako-e2e-api-key"
step "ready: kubectl -n $NAMESPACE get pods; API key in ${TAKO_E2E_STATE:-/tmp}/tako-e2e-api-key"
