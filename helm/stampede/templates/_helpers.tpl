{{/* Chart name, truncated to 63 characters (a DNS label). */}}
{{- define "stampede.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "stampede.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stampede.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stampede.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stampede.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "stampede.labels" -}}
helm.sh/chart: {{ include "stampede.chart" . }}
{{ include "stampede.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The broker pods' selector: the component keeps the in-chart Redis out of it. */}}
{{- define "stampede.brokerSelectorLabels" -}}
{{ include "stampede.selectorLabels" . }}
app.kubernetes.io/component: broker
{{- end }}

{{- define "stampede.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stampede.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "stampede.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The in-chart Redis's name (StatefulSet and Service). */}}
{{- define "stampede.redisName" -}}
{{- printf "%s-redis" (include "stampede.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* The Redis URL the nodes use: "" means none (in-memory engine). */}}
{{- define "stampede.redisUrl" -}}
{{- if .Values.redis.internal.enabled }}
{{- printf "redis://%s:6379" (include "stampede.redisName" .) }}
{{- else }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/* Whether the pods get a Redis URL at all. */}}
{{- define "stampede.hasRedis" -}}
{{- if or .Values.redis.internal.enabled .Values.redis.existingSecret (include "stampede.redisUrl" .) }}true{{- end }}
{{- end }}

{{/* The Secret holding the Redis URL, and its key. */}}
{{- define "stampede.redisSecretName" -}}
{{- if and .Values.redis.existingSecret (not .Values.redis.internal.enabled) }}
{{- .Values.redis.existingSecret }}
{{- else }}
{{- include "stampede.fullname" . }}
{{- end }}
{{- end }}

{{- define "stampede.redisSecretKey" -}}
{{- if and .Values.redis.existingSecret (not .Values.redis.internal.enabled) }}
{{- .Values.redis.existingSecretKey }}
{{- else }}
{{- "redis-url" }}
{{- end }}
{{- end }}

{{/* The environment variable of a setting: max-connections -> STAMPEDE_MAX_CONNECTIONS. */}}
{{- define "stampede.envName" -}}
{{- printf "STAMPEDE_%s" (. | upper | replace "-" "_") }}
{{- end }}

{{/* Settings whose values are secrets (space-separated): never rendered into the ConfigMap. */}}
{{- define "stampede.secretSettings" -}}
jwt-secret admin-token app-backend-secret
{{- end }}

{{/* The secret settings given under config (space-separated): the chart's Secret holds them. */}}
{{- define "stampede.chartSecretSettings" -}}
{{- $keys := list }}
{{- range splitList " " (include "stampede.secretSettings" .) }}
{{- if hasKey $.Values.config . }}
{{- $keys = append $keys . }}
{{- end }}
{{- end }}
{{- join " " $keys }}
{{- end }}

{{/* Whether the chart renders its own Secret: the Redis URL it knows, or secret settings. */}}
{{- define "stampede.hasChartSecret" -}}
{{- if or (include "stampede.chartSecretSettings" .) (and (include "stampede.hasRedis" .) (or .Values.redis.internal.enabled (not .Values.redis.existingSecret))) }}true{{- end }}
{{- end }}

{{/* Whether /metrics is served without the admin token (config.metrics-public). */}}
{{- define "stampede.metricsPublic" -}}
{{- if has (get .Values.config "metrics-public" | toString | lower) (list "true" "yes" "on" "1") }}true{{- end }}
{{- end }}

{{/* The admin token's Secret and key ("NAME KEY"), or "" when no admin token is configured. */}}
{{- define "stampede.adminTokenRef" -}}
{{- $existing := index .Values.existingSecrets "admin-token" }}
{{- if $existing.name }}
{{- printf "%s %s" $existing.name $existing.key }}
{{- else if hasKey .Values.config "admin-token" }}
{{- printf "%s admin-token" (include "stampede.fullname" .) }}
{{- end }}
{{- end }}

{{/* The Secret and key ("NAME KEY") Prometheus reads the bearer token from, or "" for none. */}}
{{- define "stampede.metricsTokenRef" -}}
{{- $explicit := .Values.serviceMonitor.bearerTokenSecret }}
{{- if $explicit.name }}
{{- printf "%s %s" $explicit.name ($explicit.key | default "admin-token") }}
{{- else if not (include "stampede.metricsPublic" .) }}
{{- include "stampede.adminTokenRef" . }}
{{- end }}
{{- end }}

{{/* Seconds from deletion to SIGKILL: preStop sleep + drain period + margin, unless set. */}}
{{- define "stampede.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add .Values.drain.preStopSleepSeconds .Values.drain.periodSeconds .Values.drain.marginSeconds }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Refuses value combinations that cannot work. */}}
{{- define "stampede.validate" -}}
{{- if and (not (include "stampede.hasRedis" .)) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "redis: with more than one replica (or autoscaling) the nodes need Redis: set redis.url, redis.existingSecret or redis.internal.enabled=true (an empty redis.url runs each pod alone in memory, for replicaCount=1 only)" }}
{{- end }}
{{- range $key, $_ := .Values.config }}
{{- if has $key (list "redis-url" "node-id" "listen" "stomp-listen" "admin-listen" "drain-period") }}
{{- fail (printf "config.%s: set this through the chart's own values (redis.*, ports.*, stomp.enabled, drain.periodSeconds), not config" $key) }}
{{- end }}
{{- end }}
{{- range splitList " " (include "stampede.secretSettings" .) }}
{{- if and (hasKey $.Values.config .) (index $.Values.existingSecrets . "name") }}
{{- fail (printf "config.%s and existingSecrets.%s: set one, not both" . .) }}
{{- end }}
{{- end }}
{{- with .Values.serviceMonitor }}
{{- if and .enabled .namespace (ne .namespace $.Release.Namespace) (not .bearerTokenSecret.name) (not (include "stampede.metricsPublic" $)) (include "stampede.adminTokenRef" $) }}
{{- fail (printf "serviceMonitor.namespace: Prometheus reads the admin token from a Secret in %s, the ServiceMonitor's namespace: copy it there and name it in serviceMonitor.bearerTokenSecret (or set config.metrics-public=true)" .namespace) }}
{{- end }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.egress.enabled (include "stampede.hasRedis" .) (not .Values.redis.internal.enabled) (not .Values.networkPolicy.egress.extraRules) }}
{{- fail "networkPolicy.egress: with egress restricted the nodes cannot reach your Redis: add a rule for it to networkPolicy.egress.extraRules" }}
{{- end }}
{{- if and .Values.ingress.enabled .Values.ingress.sockjsAffinity.enabled (eq .Values.ingress.sockjsAffinity.cookieSameSite "None") (not .Values.ingress.tls) }}
{{- fail "ingress.sockjsAffinity.cookieSameSite: None needs a secure cookie, so ingress.tls: browsers drop SameSite=None cookies without Secure" }}
{{- end }}
{{- $volumes := list "tmp" }}
{{- range .Values.extraVolumes }}{{ $volumes = append $volumes .name }}{{ end }}
{{- range .Values.extraVolumeMounts }}
{{- if not (has .name $volumes) }}
{{- fail (printf "extraVolumeMounts: %q names no volume: add it to extraVolumes" .name) }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set maxUnavailable or minAvailable, not both (set the other to null)" }}
{{- end }}
{{- end }}
