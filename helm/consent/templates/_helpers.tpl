{{/* The release's resource name, at most 63 characters. */}}
{{- define "consent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "consent.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "consent.labels" -}}
{{ include "consent.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "consent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "consent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "consent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Pod and container security: non-root, read-only root filesystem, no capabilities. */}}
{{- define "consent.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "consent.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Where the ledger is: the database Secret, or the SQLite file on the volume. */}}
{{- define "consent.storeEnv" -}}
{{- if .Values.sqlite.enabled }}
- name: CONSENT__STORE__URL
  value: sqlite:///var/lib/consentd/consent.db
{{- else }}
- name: CONSENT__STORE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
{{- end }}
{{- end -}}

{{/* The environment of the consentd container: config file, listeners, secrets, OTLP. */}}
{{- define "consent.env" -}}
- name: CONSENT_CONFIG
  value: /etc/consentd/consentd.toml
- name: CONSENT__SERVER__LISTEN
  value: {{ printf "%s:%d" .Values.listenHost (int .Values.ports.grpc) | quote }}
- name: CONSENT__HTTP__LISTEN
  value: {{ printf "%s:%d" .Values.listenHost (int .Values.ports.http) | quote }}
{{ include "consent.storeEnv" . }}
{{- if .Values.redis.existingSecret }}
- name: {{ if .Values.redis.cluster }}CONSENT__CACHE__REDIS_CLUSTER_NODES{{ else }}CONSENT__CACHE__REDIS_URL{{ end }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.secretKey }}
{{- end }}
{{- if .Values.tls.existingSecret }}
- name: CONSENT__TLS__CERT
  value: /etc/consentd/tls/tls.crt
- name: CONSENT__TLS__KEY
  value: /etc/consentd/tls/tls.key
{{- end }}
{{- if .Values.tls.clientCaSecret }}
- name: CONSENT__TLS__CLIENT_CA
  value: /etc/consentd/client-ca/ca.crt
{{- end }}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .Values.otel.serviceName | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .Values.otel.sampler | quote }}
{{- if hasSuffix "traceidratio" .Values.otel.sampler }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.otel.samplerArg | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* One TOML value. Helm reads YAML numbers as floats, and consentd's integer settings
refuse `5.0`: whole numbers are written as integers. */}}
{{- define "consent.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "float64" $v -}}
{{- if eq $v (floor $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "bool" $v) -}}
{{- $v -}}
{{- else if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else -}}
{{- fail (printf "config: %v is not a number, a string or a boolean (consentd settings are one of these)" $v) -}}
{{- end -}}
{{- end -}}

{{/* consentd.toml from the `config` values: one table per section. */}}
{{- define "consent.toml" -}}
{{- range $section, $keys := .Values.config }}
[{{ $section }}]
{{- range $key, $value := $keys }}
{{ $key }} = {{ include "consent.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end -}}
