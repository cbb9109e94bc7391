{{- define "clipdpo.labels" -}}
app.kubernetes.io/name: clipdpo
app.kubernetes.io/part-of: clipdpo
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}
