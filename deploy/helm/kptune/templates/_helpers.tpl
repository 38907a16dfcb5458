{{- define "kptune.name" -}}{{ .Release.Name }}-agent{{- end -}}
{{- define "kptune.labels" -}}
app.kubernetes.io/name: kptune-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
