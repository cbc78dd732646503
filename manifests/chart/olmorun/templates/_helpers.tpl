{{/* Names and labels shared by every object of the release. */}}
{{- define "olmorun.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "olmorun.operatorName" -}}
{{- printf "%s-operator" (include "olmorun.fullname" .) -}}
{{- end -}}

{{- define "olmorun.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "olmorun.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The image reference: repository@digest when a digest is given, else repository:tag (appVersion). */}}
{{- define "olmorun.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces that get the training pods' ServiceAccount and NetworkPolicy. */}}
{{- define "olmorun.trainerNamespaces" -}}
{{- $namespaces := .Values.trainer.serviceAccount.namespaces | default .Values.watchNamespaces | default (list .Release.Namespace) -}}
{{- toJson $namespaces -}}
{{- end -}}

{{/*
RBAC: exactly the requests the operator sends (tests/e2e/test_rbac_from_requests.py compares these rules
with the requests recorded in the emulator while the operator runs, both ways).
- olmoruns: kopf lists and watches them and patches metadata (finalizer, progress annotations);
- olmoruns/status: the one status patch of each reconcile;
- olmoruns/finalizers update: the Volcano Jobs name their OlmoRun as owner with blockOwnerDeletion, which
  the OwnerReferencesPermissionEnforcement admission plugin allows only with this permission;
- Volcano jobs: submitted (create), observed (get), cancelled (delete); never listed or watched;
- pods list: the exit code and reason of a failed job's pods;
- events create: kopf posts the run's Events;
- customresourcedefinitions list/watch (cluster-wide): kopf follows changes of the resources it serves.
No Secret access: jobs receive Secrets through envFrom; the operator never reads them.
*/}}
{{- define "olmorun.namespacedRules" -}}
- apiGroups: ["olmorun.dev"]
  resources: ["olmoruns"]
  verbs: ["list", "patch", "watch"]
- apiGroups: ["olmorun.dev"]
  resources: ["olmoruns/status"]
  verbs: ["patch"]
- apiGroups: ["olmorun.dev"]
  resources: ["olmoruns/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch.volcano.sh"]
  resources: ["jobs"]
  verbs: ["create", "delete", "get"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* Cluster-scoped, in every mode: kopf lists and watches CRDs to notice changes of the resources it serves. */}}
{{- define "olmorun.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end -}}

{{/* Only when serving named namespaces: kopf lists and watches namespaces to follow the ones it serves
(serving every namespace, it watches the runs cluster-wide and never reads namespaces). */}}
{{- define "olmorun.clusterRules" -}}
{{ include "olmorun.crdRules" . }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end -}}
