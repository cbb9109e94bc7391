{{- define "clipdpo.labels" -}}
app.kubernetes.io/name: clipdpo
app.kubernetes.io/part-of: clipdpo
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- /* The TrainJob's runtime as <kind>/<name>: train.runtime, else the runtime this chart installs. */ -}}
{{- define "clipdpo.trainRuntime" -}}
{{- if .Values.train.runtime -}}
{{ .Values.train.runtime }}
{{- else if and (not .Values.trainingRuntime.create) (eq .Values.train.launcher "trainjob") -}}
{{ fail "train.runtime is empty and trainingRuntime.create is false: name the runtime TrainJobs run on (train.runtime)" }}
{{- else -}}
{{ printf "%s/%s" .Values.trainingRuntime.kind .Values.trainingRuntime.name }}
{{- end -}}
{{- end -}}
