variable "bucket_name" {
  description = "Name of the repository bucket (walvault's repo = s3://<bucket_name>/<prefix>)."
  type        = string
}

variable "prefix" {
  description = "Key prefix of the repository inside the bucket (one per cluster), without slashes at either end."
  type        = string
  default     = "main"
}

variable "kms_key_arn" {
  description = "KMS key for default encryption; null means SSE-S3 (AES256)."
  type        = string
  default     = null
}

variable "noncurrent_expire_days" {
  description = "Days a deleted or overwritten object version is kept (versioning): the window to undo a deletion by a stolen retention credential."
  type        = number
  default     = 30
}

variable "object_lock_mode" {
  description = "GOVERNANCE or COMPLIANCE to turn on Object Lock with a default retention; null for no Object Lock. Object Lock can only be turned on when the bucket is created."
  type        = string
  default     = null
  validation {
    condition     = var.object_lock_mode == null || contains(["GOVERNANCE", "COMPLIANCE"], coalesce(var.object_lock_mode, "x"))
    error_message = "object_lock_mode must be GOVERNANCE, COMPLIANCE or null."
  }
}

variable "require_create_only" {
  description = "Deny the database host any PutObject or CompleteMultipartUpload without If-None-Match (the s3:if-none-match condition key), keep marks aside: it can create objects, never replace them. Needs walvault's s3.create_only = true (the default)."
  type        = bool
  default     = true
}

variable "object_lock_days" {
  description = "Default Object Lock retention in days (set the same in walvault's s3.object_lock_days)."
  type        = number
  default     = 35
}

variable "standard_expire_days" {
  description = "Expire objects tagged walvault-class=standard (daily WAL and backups, with walvault's s3.class_tags = true) this many days after they were written: a backstop behind `walvault delete`. 0 turns the rule off. Keep it far above retention.keep_days: the rule does not know which WAL the oldest kept backup still needs."
  type        = number
  default     = 0
  validation {
    condition     = var.standard_expire_days >= 0
    error_message = "standard_expire_days must be 0 (off) or a number of days."
  }
}

variable "permanent_keep_days" {
  description = "Days objects tagged walvault-class=permanent (backup-mark --permanent: the backup and its WAL) are kept, counted from when they were written. 2557 days is 7 years."
  type        = number
  default     = 2557
  validation {
    condition     = var.permanent_keep_days >= 1
    error_message = "permanent_keep_days must be at least 1."
  }
}

variable "permanent_transitions" {
  description = "Storage-class transitions of permanent objects. GLACIER_IR stays readable by walvault as is; GLACIER and DEEP_ARCHIVE need `aws s3api restore-object` on every object of the backup and its WAL before a restore (see docs/runbook.md)."
  type = list(object({
    days          = number
    storage_class = string
  }))
  default = [{ days = 30, storage_class = "GLACIER_IR" }]
}

variable "replication_destination_bucket_arn" {
  description = "ARN of a versioned bucket in another region to replicate the repository to (disaster recovery); null for no replication. With Object Lock here, the destination needs Object Lock too."
  type        = string
  default     = null
}

variable "replication_destination_kms_key_arn" {
  description = "KMS key in the destination region for the replicas; null for the destination's SSE-S3."
  type        = string
  default     = null
}

variable "replication_storage_class" {
  description = "Storage class of the replicas."
  type        = string
  default     = "STANDARD_IA"
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
