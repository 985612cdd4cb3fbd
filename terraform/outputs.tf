output "bucket" {
  description = "The repository bucket name."
  value       = aws_s3_bucket.repo.id
}

output "repo_url" {
  description = "walvault's repo setting."
  value       = "s3://${aws_s3_bucket.repo.id}/${var.prefix}"
}

output "database_host_policy_arn" {
  description = "Attach to the database host's role: put and get, no delete."
  value       = aws_iam_policy.database_host.arn
}

output "retention_policy_arn" {
  description = "Attach to the retention job's role: list and delete."
  value       = aws_iam_policy.retention_job.arn
}

output "replication_role_arn" {
  description = "The role S3 replicates with (null without replication)."
  value       = local.replicate ? aws_iam_role.replication[0].arn : null
}

output "bucket_arn" {
  description = "The repository bucket ARN (a DR bucket's ARN goes into another instance's replication_destination_bucket_arn)."
  value       = aws_s3_bucket.repo.arn
}
