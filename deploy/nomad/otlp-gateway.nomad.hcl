# otlp-gateway on Nomad: OTLP/gRPC and OTLP/HTTP services with health checks, keys and backend
# secrets from Nomad variables, memory sized from measurement, durable queues on a host volume;
# HAProxy in front (group "balancer": per-request balancing over the replicas, on 4317 and 4318)
# and Redis for what the replicas share (redis.nomad.hcl). A replica scaled away leaves its queue
# on its client's volume: otlp-gateway-drain.nomad.hcl delivers it.
#
# Before the first run (docs/deploy.md, "Nomad"):
#   1. the backend: deploy/nomad/otel-lgtm.nomad.hcl (service otel-lgtm-http), or change the
#      `endpoint` line of the config below;
#   2. the secrets, in the job's variable (readable by this job only):
#        nomad var put nomad/jobs/otlp-gateway \
#          admin_key="$(openssl rand -hex 32)" \
#          demo_key_sha256="sha256:..."   # the line `otlp-gateway keys new demo` prints
#          backend_token="..."            # sent to the backend as a bearer token
#   3. on every client that may run it, a host volume for the durable queue, writable by the
#      container's user (uid 10001):
#        install -d -o 10001 -g 10001 /opt/otlp-gateway/queue
#        client { host_volume "otlp-gateway-queue" { path = "/opt/otlp-gateway/queue" } }
#
#   4. Redis: nomad job run redis.nomad.hcl (service otlp-gateway-redis; without it each replica
#      keeps its own quotas).
#
#   cd deploy/nomad    # the balancer reads ../haproxy/haproxy.cfg (file() runs here)
#   nomad job run -var image=registry.example.com/otlp-gateway:0.1.0 otlp-gateway.nomad.hcl

variable "image" {
  type        = string
  default     = "otlp-gateway:0.1.0"
  description = "the image built from the repository's Dockerfile"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "replicas" {
  type        = number
  default     = 3
  description = "replicas (at most 6: the balancer's slots); each on its own client and volume"
}

job "otlp-gateway" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "gateway" {
    count = var.replicas

    # A durable queue belongs to one gateway: never two allocations on the same volume.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    # The OTLP ports are dynamic: the balancer holds 4317 and 4318 on whichever client it runs,
    # and finds the replicas through service discovery. The admin port is static (one replica
    # per client): the balancer checks /readyz on it.
    network {
      port "grpc" {
        to = 4317
      }
      port "http" {
        to = 4318
      }
      port "admin" {
        static = 9464
        to     = 9464
      }
    }

    volume "queue" {
      type      = "host"
      source    = "otlp-gateway-queue"
      read_only = false
    }

    restart {
      attempts = 5
      interval = "10m"
      delay    = "10s"
      mode     = "delay"
    }

    # OTLP/gRPC. Nomad's own service checks are HTTP or TCP: readiness comes from the admin
    # listener (the gRPC health service answers on 4317 too, for Consul `grpc` checks).
    service {
      name     = "otlp-gateway-grpc"
      port     = "grpc"
      provider = "nomad"
      tags     = ["otlp", "grpc"]

      check {
        name     = "ready"
        type     = "http"
        port     = "admin"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # OTLP/HTTP (and gRPC, gRPC-web, Connect: every port serves every transport). The tags
    # publish it through Traefik's Nomad provider over HTTPS, forwarded as h2c.
    service {
      name     = "otlp-gateway-http"
      port     = "http"
      provider = "nomad"
      tags = [
        "otlp",
        "http",
        "traefik.enable=true",
        "traefik.http.routers.otlp-gateway.rule=Host(`otlp.example.com`)",
        "traefik.http.routers.otlp-gateway.entrypoints=websecure",
        "traefik.http.routers.otlp-gateway.tls=true",
        "traefik.http.services.otlp-gateway.loadbalancer.server.scheme=h2c",
      ]

      check {
        name     = "ready"
        type     = "http"
        port     = "admin"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "gateway" {
      driver = "docker"

      config {
        image = var.image
        ports = ["grpc", "http", "admin"]
        args  = ["serve", "--config", "/secrets/gateway.yaml"]
      }

      volume_mount {
        volume      = "queue"
        destination = "/var/lib/otlp-gateway"
      }

      # Admin listener: /metrics (Prometheus), /healthz, /readyz, status page, admin API. In the
      # task, because check_restart (restart when /healthz keeps failing) belongs to task services.
      service {
        name     = "otlp-gateway-admin"
        port     = "admin"
        provider = "nomad"
        tags     = ["metrics"]

        check {
          name     = "alive"
          type     = "http"
          path     = "/healthz"
          interval = "10s"
          timeout  = "2s"

          check_restart {
            limit = 3
            grace = "30s"
          }
        }
      }

      # The config, rendered with the job's variable (keys, backend token) and the backend's
      # address from Nomad service discovery. It holds secrets, so it lives in secrets/. On a
      # change (a rotated key, a moved backend) Nomad sends SIGHUP and the gateway reloads
      # without a restart. `$${VAR}` is a literal `${VAR}` for the gateway's own interpolation.
      template {
        destination   = "secrets/gateway.yaml"
        change_mode   = "signal"
        change_signal = "SIGHUP"
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

      # Measured (docs/deploy.md, "Memory"): 45-46 MiB idle, 62-65 MiB at 170-180 requests/s,
      # 127-131 MiB while a backlog drains after a backend outage under the same load, 221-245
      # MiB with 16 concurrent 4 MiB requests (max_inflight_bytes 64MiB). Nomad's default
      # (300 MB) would be too tight for that last case; `memory` is the hard limit unless memory
      # oversubscription is enabled, where `memory_max` is.
      resources {
        cpu        = 1000
        memory     = 384
        memory_max = 512
      }

      # Above shutdown_timeout: on SIGTERM the queues drain first (what is left stays on disk).
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"
    }
  }

  # HAProxy: deploy/haproxy/haproxy.cfg, with the replicas from Nomad's service discovery as
  # GATEWAY_<n> (up to 6). Per request, so one client's gRPC connection is spread over every
  # replica; a replica that stops is taken out by its /readyz and its requests retried on the
  # others. The replica list is environment, which a running process cannot take again: a
  # change in it (a replica added, removed, or moved by a deploy) restarts HAProxy, a second in
  # which exporters reconnect and retry.
  group "balancer" {
    count = 1

    network {
      port "grpc" {
        static = 4317
        to     = 4317
      }
      port "http" {
        static = 4318
        to     = 4318
      }
      port "stats" {
        to = 8404
      }
    }

    # Both ports take every transport (gRPC, OTLP/HTTP, gRPC-web, Connect).
    service {
      name     = "otlp-gateway-balancer"
      port     = "grpc"
      provider = "nomad"
      tags     = ["otlp", "grpc", "http"]

      check {
        name     = "haproxy"
        type     = "http"
        port     = "stats"
        path     = "/stats"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "haproxy" {
      driver = "docker"

      config {
        image = "haproxy:2.6"
        ports = ["grpc", "http", "stats"]
        args  = ["haproxy", "-f", "/local/haproxy.cfg"]
      }

      # The file itself, read when the job is submitted (run `nomad job run` in deploy/nomad).
      template {
        data        = file("../haproxy/haproxy.cfg")
        destination = "local/haproxy.cfg"
        change_mode = "restart"
      }

      template {
        destination = "local/gateways.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{- range $i, $s := nomadService "otlp-gateway-grpc" }}
          GATEWAY_{{ add $i 1 }}={{ $s.Address }}:{{ $s.Port }}
          {{- end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 128
      }

      kill_timeout = "30s"
    }
  }
}
