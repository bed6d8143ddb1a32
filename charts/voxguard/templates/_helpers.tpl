{{- define "voxguard.fullname" -}}
{{- printf "%s-voxguard" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "voxguard.labels" -}}
app.kubernetes.io/name: voxguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "voxguard.selector" -}}
app.kubernetes.io/name: voxguard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "voxguard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The voxguard container. In sidecar mode on Kubernetes >= 1.29 it is a native sidecar: an init
container with restartPolicy Always, so it starts before the app and stops after it. There is no
preStop hook: SIGTERM starts the drain, and the pod's grace period outlasts it. */}}
{{- define "voxguard.container" -}}
- name: voxguard
  image: {{ include "voxguard.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["run", "--config", "/etc/voxguard/proxy.toml"]
  ports:
    - name: https
      containerPort: {{ .Values.ports.https }}
    - name: admin
      containerPort: {{ .Values.ports.admin }}
  {{- with .Values.secretEnv }}
  env:
    {{- range . }}
    - name: {{ .name }}
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ .key }}
    {{- end }}
  {{- end }}
  startupProbe:
    httpGet: {path: /healthz, port: admin}
    periodSeconds: 1
    failureThreshold: 30
  livenessProbe:
    httpGet: {path: /healthz, port: admin}
    periodSeconds: 10
  readinessProbe:
    httpGet: {path: /readyz, port: admin}
    periodSeconds: 5
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: voxguard-config
      mountPath: /etc/voxguard/proxy.toml
      subPath: proxy.toml
      readOnly: true
    - name: voxguard-state
      mountPath: /var/lib/voxguard
    {{- if .Values.tls.secretName }}
    - name: voxguard-tls
      mountPath: /etc/voxguard/tls
      readOnly: true
    {{- end }}
{{- end -}}

{{/* The sidecar, for a workload chart's pod spec: `{{ include "voxguard.sidecar" . }}` under
initContainers (Kubernetes >= 1.29) or containers (older), with "voxguard.volumes" under volumes. */}}
{{- define "voxguard.sidecar" -}}
{{- $c := include "voxguard.container" . | fromYamlArray -}}
{{- $first := index $c 0 -}}
{{- if semverCompare ">=1.29-0" .Capabilities.KubeVersion.Version -}}
{{- $_ := set $first "restartPolicy" "Always" -}}
{{- end -}}
{{- list $first | toYaml -}}
{{- end -}}

{{- define "voxguard.volumes" -}}
- name: voxguard-config
  configMap:
    name: {{ include "voxguard.fullname" . }}
- name: voxguard-state
  {{- if eq .Values.persistence.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "voxguard.fullname" . }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- if .Values.tls.secretName }}
- name: voxguard-tls
  secret:
    secretName: {{ .Values.tls.secretName }}
{{- end }}
{{- end -}}

{{- define "voxguard.podAnnotations" -}}
checksum/config: {{ tpl .Values.config . | sha256sum }}
{{- end -}}
