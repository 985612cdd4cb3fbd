# The walvault repository bucket: versioned, encrypted, private, TLS only,
# incomplete uploads and deleted versions cleaned up, lifecycle classes by tag,
# optional Object Lock, optional cross-region replication (replication.tf), and
# two least-privilege policies (iam.tf).
#
# Lifecycle rules act on the tag walvault-class, never on a bare prefix: a
# prefix rule would also expire permanent backups and the WAL they keep, and S3
# filters cannot exclude. walvault tags what it writes (s3.class_tags) and
# backup-mark re-tags a marked backup with exactly its WAL:
#   standard   daily WAL and backups   `walvault delete` decides; optional backstop expiry
#   permanent  backup-mark --permanent colder storage, expired after permanent_keep_days (7 years)
#   kept       keep-until marks, the repository identity, timeline history files: never expired here

locals {
  repo = "${var.prefix}/"
  sse  = var.kms_key_arn == null ? "AES256" : "aws:kms"
}

resource "aws_s3_bucket" "repo" {
  bucket              = var.bucket_name
  object_lock_enabled = var.object_lock_mode != null
  tags                = var.tags
}

# Versioning: a deletion leaves a non-current version for noncurrent_expire_days.
resource "aws_s3_bucket_versioning" "repo" {
  bucket = aws_s3_bucket.repo.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "repo" {
  bucket = aws_s3_bucket.repo.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = local.sse
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_public_access_block" "repo" {
  bucket                  = aws_s3_bucket.repo.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "repo" {
  bucket = aws_s3_bucket.repo.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid     = "DenyPlainHttp"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.repo.arn,
      "${aws_s3_bucket.repo.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "repo" {
  bucket     = aws_s3_bucket.repo.id
  policy     = data.aws_iam_policy_document.tls_only.json
  depends_on = [aws_s3_bucket_public_access_block.repo]
}

resource "aws_s3_bucket_lifecycle_configuration" "repo" {
  bucket     = aws_s3_bucket.repo.id
  depends_on = [aws_s3_bucket_versioning.repo]

  rule {
    id     = "abort-incomplete-multipart"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 2
    }
  }

  # A backstop behind `walvault delete`, not a policy: keep it well above
  # retention.keep_days plus the longest time a backup may fail in a row.
  dynamic "rule" {
    for_each = var.standard_expire_days > 0 ? [1] : []
    content {
      id     = "standard-class-expiry"
      status = "Enabled"
      filter {
        and {
          prefix = local.repo
          tags   = { "walvault-class" = "standard" }
        }
      }
      expiration {
        days = var.standard_expire_days
      }
    }
  }

  # Audit keeps: days count from when the object was written, so a backup marked
  # permanent lives permanent_keep_days from the night it was taken.
  rule {
    id     = "permanent-class"
    status = "Enabled"
    filter {
      and {
        prefix = local.repo
        tags   = { "walvault-class" = "permanent" }
      }
    }
    dynamic "transition" {
      for_each = var.permanent_transitions
      content {
        days          = transition.value.days
        storage_class = transition.value.storage_class
      }
    }
    expiration {
      days = var.permanent_keep_days
    }
  }

  rule {
    id     = "noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_expire_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }
}

resource "aws_s3_bucket_object_lock_configuration" "repo" {
  count  = var.object_lock_mode == null ? 0 : 1
  bucket = aws_s3_bucket.repo.id
  rule {
    default_retention {
      mode = var.object_lock_mode
      days = var.object_lock_days
    }
  }
  depends_on = [aws_s3_bucket_versioning.repo]
}
