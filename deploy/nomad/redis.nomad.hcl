# Redis for the otlp-gateway job: what its replicas share (the config's `cluster`): cluster-wide
# tenant quotas and the fleet view on the status page. Nothing in it must survive a restart
# (counters start again, replicas say they are alive every 2 s), so no volume; while it is away
# each replica enforces its own share of the quotas and goes on taking data.
#
#   nomad job run redis.nomad.hcl

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

job "otlp-gateway-redis" {
  datacenters = var.datacenters
  type        = "service"

  group "redis" {
    count = 1

    network {
      port "redis" {
        to = 6379
      }
    }

    # The gateway job's template finds it by this name.
    service {
      name     = "otlp-gateway-redis"
      port     = "redis"
      provider = "nomad"

      check {
        name     = "alive"
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "redis" {
      driver = "docker"

      config {
        image = "redis:7.0-alpine"
        ports = ["redis"]
        args  = ["redis-server", "--save", "", "--appendonly", "no", "--maxmemory", "128mb"]
      }

      resources {
        cpu    = 200
        memory = 192
      }
    }
  }
}
