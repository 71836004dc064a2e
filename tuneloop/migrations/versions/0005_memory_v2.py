"""correction memory v2: alternative questions on corrections, memory outcome and scores on messages

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('correction', schema=None) as batch_op:
        batch_op.add_column(sa.Column('alternative_questions', sa.JSON(), nullable=False, server_default='[]'))
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('memory_outcome', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('memory_scores', sa.JSON(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_column('memory_scores')
        batch_op.drop_column('memory_outcome')
    with op.batch_alter_table('correction', schema=None) as batch_op:
        batch_op.drop_column('alternative_questions')
