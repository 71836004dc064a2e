"""fine-tuning jobs can be paused: pause_requested on finetunejob (``paused`` is a new status value of
the existing string column, no schema change)

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('finetunejob', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pause_requested', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('finetunejob', schema=None) as batch_op:
        batch_op.drop_column('pause_requested')
