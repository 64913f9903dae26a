{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "knock-sink.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: the release name, with the chart's unless it contains it. */}}
{{- define "knock-sink.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "knock-sink.selectorLabels" -}}
app.kubernetes.io/name: {{ include "knock-sink.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "knock-sink.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "knock-sink.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "knock-sink.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "knock-sink.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "knock-sink.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding the API key, and its key. */}}
{{- define "knock-sink.apiKeySecret" -}}
{{- if .Values.knock.existingSecret -}}
{{- .Values.knock.existingSecret -}}
{{- else if .Values.knock.apiKey -}}
{{- printf "%s-api-key" (include "knock-sink.fullname" .) -}}
{{- else -}}
{{- fail "knock-sink: set knock.apiKey (the chart creates a Secret) or knock.existingSecret (a Secret you manage)" -}}
{{- end -}}
{{- end -}}

{{- define "knock-sink.apiKeySecretKey" -}}
{{- if .Values.knock.existingSecret -}}
{{- .Values.knock.existingSecretKey -}}
{{- else -}}
KNOCK_API_KEY
{{- end -}}
{{- end -}}

{{- define "knock-sink.configName" -}}
{{- printf "%s-config" (include "knock-sink.fullname" .) -}}
{{- end -}}

{{/*
The effective settings: .Values.config with sink.metrics_port set to metrics.port. The API key
is never part of them (a knock.api_key in values is refused): it comes from the Secret only.
*/}}
{{- define "knock-sink.settings" -}}
{{- $config := deepCopy (default dict .Values.config) -}}
{{- $knock := default dict (get $config "knock") -}}
{{- if hasKey $knock "api_key" -}}
{{- fail "knock-sink: config.knock.api_key is not allowed; use knock.apiKey or knock.existingSecret (exposed as KNOCK_API_KEY)" -}}
{{- end -}}
{{- $sink := default dict (get $config "sink") -}}
{{- $_ := set $sink "metrics_port" (int .Values.metrics.port) -}}
{{- $_ := set $config "sink" $sink -}}
{{- toJson $config -}}
{{- end -}}

{{/*
TOML rendering. Helm reads every number in values as a float; integral ones are written as
integers (librdkafka rejects "10000.0" for an integer property). Keys are always quoted, so
dotted librdkafka names stay one key. Nulls are left out (TOML has none).
*/}}
{{- define "knock-sink.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if kindIs "float64" $v -}}
{{- if eq (floor $v) $v -}}{{- int64 $v -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- $v -}}
{{- else if kindIs "slice" $v -}}
{{- $items := list -}}
{{- range $v -}}{{- $items = append $items (include "knock-sink.toml.value" .) -}}{{- end -}}
[{{ join ", " $items }}]
{{- else if kindIs "map" $v -}}
{{- $items := list -}}
{{- range $k, $item := $v -}}
{{- if not (kindIs "invalid" $item) -}}
{{- $items = append $items (printf "%s = %s" (toJson $k) (include "knock-sink.toml.value" $item)) -}}
{{- end -}}
{{- end -}}
{ {{- join ", " $items -}} }
{{- else -}}
{{- fail (printf "knock-sink: cannot write %v (%s) as TOML" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* One table: its plain keys, then each sub-table under its own [header]. */}}
{{- define "knock-sink.toml.table" -}}
{{- $path := .path -}}
{{- $table := .table -}}
{{- range $k, $v := $table -}}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ toJson $k }} = {{ include "knock-sink.toml.value" $v }}
{{- end -}}
{{- end -}}
{{- range $k, $v := $table -}}
{{- if kindIs "map" $v -}}
{{- $sub := append $path (toJson $k) }}

[{{ join "." $sub }}]
{{- include "knock-sink.toml.table" (dict "path" $sub "table" $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "knock-sink.toml" -}}
# knock-sink settings, rendered by the Helm chart from .Values.config.
# The API key is not here: it is the environment variable KNOCK_API_KEY, from a Secret.
{{- include "knock-sink.toml.table" (dict "path" list "table" (include "knock-sink.settings" . | fromJson)) }}
{{ end -}}

{{/* Volumes shared by the Deployment and the backfill Job. */}}
{{- define "knock-sink.volumes" -}}
- name: config
  {{- if .Values.configAsSecret }}
  secret:
    secretName: {{ include "knock-sink.configName" . }}
  {{- else }}
  configMap:
    name: {{ include "knock-sink.configName" . }}
  {{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "knock-sink.volumeMounts" -}}
- name: config
  mountPath: /etc/knock-sink
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "knock-sink.env" -}}
- name: KNOCK_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "knock-sink.apiKeySecret" . }}
      key: {{ include "knock-sink.apiKeySecretKey" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
