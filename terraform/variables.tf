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

variable "object_lock_days" {
  description = "Default Object Lock retention in days (set the same in walvault's s3.object_lock_days)."
  type        = number
  default     = 35
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
