# Repository buckets for the cluster "prod-main": the primary in eu-west-1 with
# Object Lock and lifecycle classes, replicated to a DR bucket in eu-central-1.
# terraform init && terraform apply, then put the outputs in walvault's config:
#   repo = "<repo_url>"   and, for the class rules,   [s3] class_tags = true

provider "aws" {
  region = "eu-west-1"
}

provider "aws" {
  alias  = "dr"
  region = "eu-central-1"
}

# The DR copy: same protections, its own lifecycle (deletions are not replicated).
module "walvault_repo_dr" {
  source    = "../../terraform"
  providers = { aws = aws.dr }

  bucket_name          = "acme-pg-archive-prod-dr"
  prefix               = "prod-main"
  object_lock_mode     = "GOVERNANCE"
  object_lock_days     = 35
  standard_expire_days = 60
  tags                 = { service = "postgresql", owner = "dba", role = "dr" }
}

module "walvault_repo" {
  source = "../../terraform"

  bucket_name            = "acme-pg-archive-prod"
  prefix                 = "prod-main"
  noncurrent_expire_days = 30
  object_lock_mode       = "GOVERNANCE"
  object_lock_days       = 35
  # A backstop only: walvault delete keeps 14 days of backups (retention.keep_days).
  standard_expire_days = 90
  # Audit keeps: 7 years, in Glacier Instant Retrieval after a month.
  permanent_keep_days = 2557
  permanent_transitions = [
    { days = 30, storage_class = "GLACIER_IR" },
  ]
  replication_destination_bucket_arn = module.walvault_repo_dr.bucket_arn
  tags                               = { service = "postgresql", owner = "dba" }
}

output "repo_url" {
  value = module.walvault_repo.repo_url
}

output "dr_repo_url" {
  value = module.walvault_repo_dr.repo_url
}

output "database_host_policy_arn" {
  value = module.walvault_repo.database_host_policy_arn
}

output "retention_policy_arn" {
  value = module.walvault_repo.retention_policy_arn
}
