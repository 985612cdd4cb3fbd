# A repository bucket for the cluster "prod-main", with Object Lock.
# terraform init && terraform apply, then put the outputs in walvault's config.

provider "aws" {
  region = "eu-west-1"
}

module "walvault_repo" {
  source = "../../terraform"

  bucket_name            = "acme-pg-archive-prod"
  prefix                 = "prod-main"
  noncurrent_expire_days = 30
  object_lock_mode       = "GOVERNANCE"
  object_lock_days       = 35
  tags                   = { service = "postgresql", owner = "dba" }
}

output "repo_url" {
  value = module.walvault_repo.repo_url
}

output "database_host_policy_arn" {
  value = module.walvault_repo.database_host_policy_arn
}

output "retention_policy_arn" {
  value = module.walvault_repo.retention_policy_arn
}
