"""A second S3 server for the tests: moto, with request signatures checked.

Starts moto's S3 on 127.0.0.1:PORT, creates an IAM user allowed S3 and its key,
then turns IAM authentication on: from then on every request must carry a valid
SigV4 signature by that key (moto recomputes it with botocore), or it is refused
with S3's own error codes. Prints one JSON line with the key, then serves until
it is killed.
"""

import json
import sys
import threading

import boto3
from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.server import ThreadedMotoServer


def main() -> None:
    port = int(sys.argv[1])
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # Before authentication is on, any key is accepted: this one only creates the user.
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="walvault")
    iam.put_user_policy(
        UserName="walvault",
        PolicyName="s3",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="walvault")["AccessKey"]
    # The server runs in this process: authentication is switched on directly.
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    print(
        json.dumps({"access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"]}),
        flush=True,
    )
    threading.Event().wait()


if __name__ == "__main__":
    main()
