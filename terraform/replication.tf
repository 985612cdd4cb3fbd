# Optional cross-region replication to a disaster-recovery bucket (region outage,
# lost account credentials in one region). Deletions are not replicated: a
# retention run or an attacker deleting here leaves the DR copy whole; give the
# DR bucket its own lifecycle (this module there, with standard_expire_days).

locals {
  replicate = var.replication_destination_bucket_arn != null
}

data "aws_iam_policy_document" "replication_assume" {
  count = local.replicate ? 1 : 0
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "replication" {
  count = local.replicate ? 1 : 0
  statement {
    sid       = "ReadSourceConfiguration"
    actions   = ["s3:GetReplicationConfiguration", "s3:ListBucket"]
    resources = [aws_s3_bucket.repo.arn]
  }
  statement {
    sid = "ReadSourceVersions"
    actions = [
      "s3:GetObjectVersionForReplication",
      "s3:GetObjectVersionAcl",
      "s3:GetObjectVersionTagging",
      "s3:GetObjectRetention",
      "s3:GetObjectLegalHold",
    ]
    resources = ["${aws_s3_bucket.repo.arn}/${local.repo}*"]
  }
  statement {
    sid       = "WriteReplicas"
    actions   = ["s3:ReplicateObject", "s3:ReplicateTags"]
    resources = ["${var.replication_destination_bucket_arn}/${local.repo}*"]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "DecryptSource"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
  dynamic "statement" {
    for_each = var.replication_destination_kms_key_arn == null ? [] : [var.replication_destination_kms_key_arn]
    content {
      sid       = "EncryptReplicas"
      actions   = ["kms:Encrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role" "replication" {
  count              = local.replicate ? 1 : 0
  name               = "${var.bucket_name}-walvault-replication"
  assume_role_policy = data.aws_iam_policy_document.replication_assume[0].json
  tags               = var.tags
}

resource "aws_iam_role_policy" "replication" {
  count  = local.replicate ? 1 : 0
  name   = "replicate-repository"
  role   = aws_iam_role.replication[0].id
  policy = data.aws_iam_policy_document.replication[0].json
}

resource "aws_s3_bucket_replication_configuration" "repo" {
  count      = local.replicate ? 1 : 0
  bucket     = aws_s3_bucket.repo.id
  role       = aws_iam_role.replication[0].arn
  depends_on = [aws_s3_bucket_versioning.repo]

  rule {
    id     = "repository-to-dr"
    status = "Enabled"
    filter {
      prefix = local.repo
    }
    delete_marker_replication {
      status = "Disabled"
    }
    dynamic "source_selection_criteria" {
      for_each = var.kms_key_arn == null ? [] : [1]
      content {
        sse_kms_encrypted_objects {
          status = "Enabled"
        }
      }
    }
    destination {
      bucket        = var.replication_destination_bucket_arn
      storage_class = var.replication_storage_class
      dynamic "encryption_configuration" {
        for_each = var.replication_destination_kms_key_arn == null ? [] : [1]
        content {
          replica_kms_key_id = var.replication_destination_kms_key_arn
        }
      }
    }
  }
}
