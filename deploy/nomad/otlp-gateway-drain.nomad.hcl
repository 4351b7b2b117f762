# Drain a removed replica's queue: a replica scaled away (or a client drained for good) leaves
# what it had acknowledged and not yet delivered in the otlp-gateway-queue host volume of its
# client. This batch job runs `otlp-gateway drain` there, with the gateway job's config (the
# same template), delivers every queue to the backends and ends: exit 0 when every queue is
# empty; non-zero when --timeout passes first (what is left stays on the volume; the restart
# below tries again).
#
# Only on a client where no replica runs any more: the queue's LOCK refuses a second process,
# and a replica started there again sends the queue itself.
#
# The config's secrets are the gateway job's variable: let this job read it (with ACLs on),
#   nomad acl policy apply -job otlp-gateway-drain otlp-gateway-drain-vars drain-vars.policy.hcl
# with drain-vars.policy.hcl holding
#   namespace "default" { variables { path "nomad/jobs/otlp-gateway" { capabilities = ["read"] } } }
#
#   nomad job run -var node=client-7 otlp-gateway-drain.nomad.hcl
#   nomad alloc logs -job otlp-gateway-drain

variable "image" {
  type        = string
  default     = "otlp-gateway:0.1.0"
  description = "the image the replicas ran"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "node" {
  type        = string
  description = "the client whose otlp-gateway-queue volume holds the queue (nomad node status)"
}

job "otlp-gateway-drain" {
  datacenters = var.datacenters
  type        = "batch"

  constraint {
    attribute = "${node.unique.name}"
    value     = var.node
  }

  group "drain" {
    count = 1

    volume "queue" {
      type      = "host"
      source    = "otlp-gateway-queue"
      read_only = false
    }

    # A backend still down at the deadline: try again a little later, twice.
    restart {
      attempts = 2
      interval = "1h"
      delay    = "1m"
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "drain" {
      driver = "docker"

      config {
        image = var.image
        args = [
          "drain",
          "--queue-dir", "/var/lib/otlp-gateway/queue",
          "--config", "/secrets/gateway.yaml",
          "--timeout", "10m",
        ]
      }

      volume_mount {
        volume      = "queue"
        destination = "/var/lib/otlp-gateway"
      }

      # The gateway job's template, as it is (tests/test_deploy.py keeps them equal): the same
      # backends, and the secrets the config interpolates.
      template {
        destination   = "secrets/gateway.yaml"
        change_mode   = "noop"
        perms         = "0400"
        uid           = 10001
        gid           = 10001
        data          = <<-EOT
          listen: ["0.0.0.0:4317", "0.0.0.0:4318"]
          {{- with nomadVar "nomad/jobs/otlp-gateway" }}
          admin: {listen: "0.0.0.0:9464", api_key: "{{ .admin_key }}"}
          backends:
            lgtm:
              protocol: http/protobuf
              endpoint: "{{ with nomadService "otel-lgtm-http" }}{{ with index . 0 }}http://{{ .Address }}:{{ .Port }}{{ end }}{{ end }}"
              headers: {Authorization: "Bearer {{ .backend_token }}"}
          service_backends: [lgtm]
          tenants:
            demo:
              api_keys: ["{{ .demo_key_sha256 }}"]
              attributes: {deployment.environment: "$${DEPLOYMENT_ENVIRONMENT:-production}"}
          {{- end }}
          queue: {durable: true, directory: /var/lib/otlp-gateway/queue, max_bytes: 512MiB}
          limits: {max_inflight_bytes: 64MiB}
          shutdown_timeout: 10s
          {{- with nomadService "otlp-gateway-redis" }}{{ with index . 0 }}
          cluster: {redis: "redis://{{ .Address }}:{{ .Port }}/0", name: prod-eu}
          {{- end }}{{ end }}
        EOT
      }

      env {
        DEPLOYMENT_ENVIRONMENT = "production"
      }

      resources {
        cpu        = 1000
        memory     = 384
        memory_max = 512
      }
    }
  }
}
