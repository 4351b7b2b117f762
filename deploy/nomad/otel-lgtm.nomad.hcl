# grafana/otel-lgtm (Grafana, Prometheus, Tempo, Loki and an OpenTelemetry Collector in one
# container) as the gateway's service-wide backend, for a home lab or a demo. The gateway finds it
# through the Nomad service `otel-lgtm-http`.
#
# It needs far more memory than Nomad's default of 300 MB, which gets the allocation killed;
# 2 GB is enough for a small setup. For production use separate Tempo, Mimir/Prometheus and Loki.
#
#   nomad job run otel-lgtm.nomad.hcl

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

job "otel-lgtm" {
  datacenters = var.datacenters
  type        = "service"

  group "otel-lgtm" {
    network {
      port "grafana" {
        to = 3000
      }
      port "otlp_grpc" {
        to = 4317
      }
      port "otlp_http" {
        to = 4318
      }
    }

    service {
      name     = "otel-lgtm-http"
      port     = "otlp_http"
      provider = "nomad"

      check {
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    service {
      name     = "otel-lgtm-grpc"
      port     = "otlp_grpc"
      provider = "nomad"
    }

    service {
      name     = "grafana"
      port     = "grafana"
      provider = "nomad"

      check {
        type     = "http"
        path     = "/api/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "lgtm" {
      driver = "docker"

      config {
        image = "grafana/otel-lgtm:0.33.0"
        ports = ["grafana", "otlp_grpc", "otlp_http"]
      }

      resources {
        cpu    = 1000
        memory = 2048
      }
    }
  }
}
