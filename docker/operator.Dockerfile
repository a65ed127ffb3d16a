# syntax=docker/dockerfile:1.7
# The Tako VM operator image: `tako-vm operator` (kopf). Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t tako-vm-operator:dev .
# The base is pinned by digest (python:3.11.14-slim-bookworm, linux/amd64+arm64 index); refresh it with
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY client ./client
COPY shim ./shim
COPY operator ./operator
COPY runner ./runner
COPY crds ./crds
RUN python -m venv /opt/tako-vm \
 && /opt/tako-vm/bin/pip install --constraint constraints.txt ".[operator]" \
 && /opt/tako-vm/bin/pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tako-vm-operator" \
      org.opencontainers.image.description="Reconciles PythonJob resources into gVisor Pods" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 tako && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp tako
COPY --from=build /opt/tako-vm /opt/tako-vm
ENV PATH=/opt/tako-vm/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["tako-vm"]
CMD ["operator"]
