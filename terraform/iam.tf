# Least privilege: the database host archives and restores but cannot delete;
# the retention job lists and deletes but never reads data.
#
# Create-only (require_create_only): the host may create objects but never
# replace one. Every PutObject and CompleteMultipartUpload must carry
# If-None-Match (walvault's s3.create_only, on by default), so a compromised
# host cannot overwrite WAL or backups it already stored. The multipart start
# and its parts take no conditional header and are exempt through
# s3:ObjectCreationOperation; keep marks (backup-mark, of backups and dumps) and the catalogues
# under catalog/ (caches that status and backup-list start from; recover,
# retention and verify never trust them) are replaced on purpose.
# A damaged stored copy is then not mended by wal-push: an administrator
# removes it (docs/runbook.md).
#
# PutObjectTagging lets the host tag what it writes (s3.class_tags) and run
# backup-mark. Re-tagging a permanent backup as standard could make the
# standard-class rule expire it: Object Lock (object_lock_mode) is what makes
# such an expiry leave the locked version in place.

data "aws_iam_policy_document" "database_host" {
  statement {
    sid       = "ListRepository"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.repo.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.repo}*"]
    }
  }
  statement {
    sid = "PushAndFetch"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      "s3:PutObjectRetention",
      "s3:PutObjectTagging",
    ]
    resources = ["${aws_s3_bucket.repo.arn}/${local.repo}*"]
  }
  statement {
    sid       = "ObjectLockStatus"
    actions   = ["s3:GetBucketObjectLockConfiguration"]
    resources = [aws_s3_bucket.repo.arn]
  }
  dynamic "statement" {
    for_each = var.require_create_only ? [1] : []
    content {
      sid     = "CreateOnly"
      effect  = "Deny"
      actions = ["s3:PutObject"]
      not_resources = [
        "${aws_s3_bucket.repo.arn}/${local.repo}backups/*/keep.json",
        "${aws_s3_bucket.repo.arn}/${local.repo}dumps/*/keep.json",
        "${aws_s3_bucket.repo.arn}/${local.repo}catalog/*",
      ]
      condition {
        test     = "Null"
        variable = "s3:if-none-match"
        values   = ["true"]
      }
      condition {
        test     = "Bool"
        variable = "s3:ObjectCreationOperation"
        values   = ["true"]
      }
    }
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "UseKmsKey"
      actions   = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

data "aws_iam_policy_document" "retention_job" {
  statement {
    sid       = "ListRepository"
    actions   = ["s3:ListBucket", "s3:GetBucketObjectLockConfiguration"]
    resources = [aws_s3_bucket.repo.arn]
  }
  statement {
    # GetObject: manifests, keep marks and history files are read to plan; the
    # data stays encrypted with age (this job holds no identity).
    sid       = "PlanAndDelete"
    actions   = ["s3:GetObject", "s3:GetObjectRetention", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.repo.arn}/${local.repo}*"]
  }
  statement {
    # After a full listing it rewrites the catalogues without what it removed.
    sid       = "RewriteCatalogue"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.repo.arn}/${local.repo}catalog/*"]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "UseKmsKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_policy" "database_host" {
  name   = "${var.bucket_name}-walvault-database-host"
  policy = data.aws_iam_policy_document.database_host.json
  tags   = var.tags
}

resource "aws_iam_policy" "retention_job" {
  name   = "${var.bucket_name}-walvault-retention"
  policy = data.aws_iam_policy_document.retention_job.json
  tags   = var.tags
}
