{{/*
Expand the name of the chart.
*/}}
{{- define "tako-vm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters (DNS label limit). The release name is used
alone when it already contains the chart name. Component suffixes are appended to a base that
leaves room for them (52 + "-operator").
*/}}
{{- define "tako-vm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tako-vm.operator.fullname" -}}
{{- printf "%s-operator" (include "tako-vm.fullname" .) }}
{{- end }}

{{- define "tako-vm.shim.fullname" -}}
{{- printf "%s-shim" (include "tako-vm.fullname" .) }}
{{- end }}

{{/*
Chart name and version as used by the chart label.
*/}}
{{- define "tako-vm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "tako-vm.labels" -}}
helm.sh/chart: {{ include "tako-vm.chart" . }}
{{ include "tako-vm.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tako-vm
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "tako-vm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tako-vm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tako-vm.operator.selectorLabels" -}}
{{ include "tako-vm.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tako-vm.shim.selectorLabels" -}}
{{ include "tako-vm.selectorLabels" . }}
app.kubernetes.io/component: shim
{{- end }}

{{- define "tako-vm.operator.labels" -}}
{{ include "tako-vm.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tako-vm.shim.labels" -}}
{{ include "tako-vm.labels" . }}
app.kubernetes.io/component: shim
{{- end }}

{{/*
ServiceAccount names.
*/}}
{{- define "tako-vm.operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.operator.create }}
{{- default (include "tako-vm.operator.fullname" .) .Values.serviceAccount.operator.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.operator.name }}
{{- end }}
{{- end }}

{{- define "tako-vm.shim.serviceAccountName" -}}
{{- if .Values.serviceAccount.shim.create }}
{{- default (include "tako-vm.shim.fullname" .) .Values.serviceAccount.shim.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.shim.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is set, else repository:tag (tag defaults to appVersion).
Usage: include "tako-vm.image" (dict "image" .Values.operator.image "context" .)
*/}}
{{- define "tako-vm.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .context.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
The Secret holding API keys.
*/}}
{{- define "tako-vm.apiKeysSecretName" -}}
{{- if .Values.apiKeys.existingSecret }}
{{- .Values.apiKeys.existingSecret }}
{{- else }}
{{- printf "%s-api-keys" (include "tako-vm.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The Secret holding the session token key (sessions.tokenKey).
*/}}
{{- define "tako-vm.sessionKeySecretName" -}}
{{- if .Values.sessions.tokenKey.existingSecret }}
{{- .Values.sessions.tokenKey.existingSecret }}
{{- else }}
{{- printf "%s-session-key" (include "tako-vm.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The job namespaces as a JSON list: jobs.namespaces, or the release namespace when that is empty.
Usage: range $ns := include "tako-vm.jobNamespaceList" . | fromJsonArray
*/}}
{{- define "tako-vm.jobNamespaceList" -}}
{{- if .Values.jobs.namespaces }}
{{- toJson .Values.jobs.namespaces }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/*
The job namespaces as a comma-separated list.
*/}}
{{- define "tako-vm.jobNamespaces" -}}
{{- include "tako-vm.jobNamespaceList" . | fromJsonArray | join "," }}
{{- end }}

{{/*
What the operator watches (TAKO_OPERATOR_NAMESPACES): "*" for every namespace, else the job namespaces.
*/}}
{{- define "tako-vm.operator.watchNamespaces" -}}
{{- if .Values.jobs.allNamespaces }}*{{ else }}{{ include "tako-vm.jobNamespaces" . }}{{ end }}
{{- end }}

{{/*
The operator's rules on jobs, sessions and what they own: one Role per watched namespace, or a
ClusterRole in the all-namespaces mode. `pythonjobs/finalizers` and `pythonsessions/finalizers` update:
the Pods, ConfigMaps and NetworkPolicies it creates carry owner references with blockOwnerDeletion,
which the OwnerReferencesPermissionEnforcement admission plugin (on by default in OpenShift) only allows
with that permission. PythonSessions (docs/sessions.md): it reads and watches them, writes their status
and deletes an ended one after sessions.retentionSeconds; their Pods and NetworkPolicies use the Pod,
ConfigMap and NetworkPolicy rules below.
*/}}
{{- define "tako-vm.operator.rules" -}}
- apiGroups: ["takovm.dev"]
  resources: ["pythonjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["takovm.dev"]
  resources: ["pythonjobs/status"]
  verbs: ["get", "patch"]
- apiGroups: ["takovm.dev"]
  resources: ["pythonjobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["takovm.dev"]
  resources: ["pythonjobtypes"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["takovm.dev"]
  resources: ["pythonjobtypes/status"]
  verbs: ["patch"]
- apiGroups: ["takovm.dev"]
  resources: ["pythonsessions"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["takovm.dev"]
  resources: ["pythonsessions/status"]
  verbs: ["patch"]
- apiGroups: ["takovm.dev"]
  resources: ["pythonsessions/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create", "get", "list", "watch", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "get", "delete"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Egress rules shared by the operator and the shim: DNS and the Kubernetes API server only.
*/}}
{{- define "tako-vm.egressToApiServer" -}}
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
- ports:
    {{- range .Values.networkPolicy.apiServerPorts }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .Values.networkPolicy.apiServerCIDRs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}
